"""Keep a tabular classifier fresh: check new data, retrain when it changed, gate, register, deploy.

One DAG per model: every model config in the config folder (`configs/`, or `$CT_CONFIG_DIR`) becomes the
DAG `<name>.retrain`, with the config's own `schedule:` and its own run slot (one run of a model at a
time; different models run in parallel). Each run validates the data contract, checks drift (Evidently)
and the champion's performance, decides, and only when something changed trains a challenger, gates it,
registers it in MLflow, (with `promotion.approval: required`, waits for a person's approval,) deploys it
with a smoke test (rolling back on failure) and promotes it. Every run ends with a run record, whatever
it decided; its decision and reason become the run's note.

Training runs where `training_backend` (param) or the config's `training.backend` says: `local` (in
the worker), `kubernetes` (a pod) or `databricks` (a job run); deploying goes to `deploy.target`:
`local` (a process on 127.0.0.1) or `kubernetes` (the deployer pod patches the serving Deployment).
Both choices are branch tasks (ConfigBranchOperator) that read the config at run time.

Trigger from the UI ("Trigger" form) or `airflow dags trigger <name>.retrain --conf '{...}'` with:
`reference_path`, `current_path` (override the config's data), `force_retrain` and `training_backend`.
Assets: an event on `<name>.current_window` starts a run when the schedule lists `current_window`; each
promotion emits `<name>.champion` (extra: version, sha256).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, TaskGroup, TriggerRule

from ct_airflow.catalog import Model, apply_task_timeouts, load_catalog, model_asset
from ct_airflow.databricks import DatabricksTrainOperator
from ct_airflow.kubernetes import KubernetesDeployOperator, KubernetesTrainOperator
from ct_airflow.operators import (
    ConfigBranchOperator,
    DecideBranchOperator,
    DeployLocalOperator,
    DriftCheckOperator,
    DriftReportOperator,
    GatesOperator,
    PerformanceCheckOperator,
    PromoteOperator,
    RegisterOperator,
    RunRecordOperator,
    TrainOperator,
    ValidateDataOperator,
)

BACKENDS = {"local": "local: in the Airflow worker", "kubernetes": "kubernetes: a pod (training.kubernetes)",
            "databricks": "databricks: a job run (training.databricks)"}

DOCS = {
    "validate_data": "Reads the reference and current windows, hashes them and checks the **data contract** "
                     "(columns, types, ranges, nulls, unseen categories). Fails closed, naming every violation: "
                     "the run is *blocked*. Pins the champion the whole run compares with.",
    "drift": "Drift per feature and for the dataset, on every row: a significance test per column with the "
             "false discovery rate controlled across columns, and the statistic Evidently would report.",
    "drift_report": "Evidently's HTML drift report on a sample of each window (the **Drift report** link opens "
                    "it). Beside the decision path: nothing waits for it but the run record.",
    "performance": "The champion's metric on the labelled current rows against its holdout metric (decay).",
    "decide": "**retrain** or **skip**, with the reason (README \"What a run decides\"). XCom `decision`.",
    "skip": "Nothing changed enough to retrain; the run record says why.",
    "choose_backend": "Follows `training_backend` (param), else the config's `training.backend`.",
    "train_local": "Fits the challenger in the worker, exports it to ONNX, logs it to the MLflow run "
                   "(signature, input example, datasets, config).",
    "train_kubernetes": "Runs the train step in a Kubernetes pod (training.kubernetes).",
    "train_databricks": "Runs the train step as a Databricks job run (training.databricks).",
    "gates": "Every validation gate on the holdout the challenger never saw; fails naming the gates that rejected it.",
    "register": "Registers the gated challenger (once per run) with its description, tags and the `challenger` "
                "alias. The **Model version** link opens it in MLflow.",
    "approve": "A person approves or rejects the registered version (*Required Actions*, or the REST API). "
               "Approve: it is deployed, then promoted. Reject or no answer in time: nothing changes.",
    "choose_target": "Follows the config's `deploy.target`.",
    "deploy_local": "Serves the version on 127.0.0.1 (`deploy.port`), smoke-tests it, rolls back on failure.",
    "deploy_kubernetes": "The deployer pod patches the serving Deployment, waits, smoke-tests, rolls back on failure.",
    "promote": "Moves `champion` to the version now serving (alias ledger) and emits the `<model>.champion` Asset "
               "event with the version and its sha256.",
    "run_record": "Writes the run record (MLflow `run_record.json`, XCom) whatever happened; its decision and "
                  "reason become the DAG run note and the MLflow run description. Fails the DAG run when the "
                  "run was blocked, rejected, rolled back or failed.",
}


def retraining_dag(model: Model) -> DAG:
    """The retraining DAG of one model (wiring only: every task calls one function of ml/)."""
    config = model.config
    paths = {"config_path": str(model.path), "reference_path": "{{ params.reference_path }}",
             "current_path": "{{ params.current_path }}"}
    with DAG(
        dag_id=model.retrain_dag_id,
        description=f"{config.name}: " + __doc__.split("\n")[0],
        doc_md=f"**Model `{config.name}`**, config `{model.path}`.\n\n" + __doc__,
        schedule=model.schedule,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        render_template_as_native_obj=True,
        tags=["ml", "continuous-training", f"model:{config.name}"],
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30),
                      "execution_timeout": model.task_timeout},
        params={
            "reference_path": Param(None, type=["null", "string"], title="Reference window",
                                    description="CSV/Parquet/JSONL file or folder; empty = the config's "
                                                "data.reference."),
            "current_path": Param(None, type=["null", "string"], title="Current window",
                                  description="Newest data (a prediction-log folder works); empty = data.current."),
            "force_retrain": Param(False, type="boolean", title="Force retrain",
                                   description="Train a challenger even if no drift or decay is found "
                                               "(the gates still apply)."),
            "training_backend": Param(None, type=["null", "string"], enum=[None, *BACKENDS],
                                      values_display={"null": f"as configured ({config.training.backend})",
                                                      **BACKENDS},
                                      title="Training backend",
                                      description="Where the challenger is trained; empty = the config's "
                                                  "training.backend."),
        },
    ) as dag:
        with TaskGroup("check", tooltip="data contract, drift and champion performance") as check:
            validate = ValidateDataOperator(task_id="validate_data", doc_md=DOCS["validate_data"], **paths)
            drift = DriftCheckOperator(task_id="drift", doc_md=DOCS["drift"], **paths)
            performance = PerformanceCheckOperator(task_id="performance", doc_md=DOCS["performance"], **paths)
            validate >> [drift, performance]
        drift_report = DriftReportOperator(task_id="drift_report", doc_md=DOCS["drift_report"], **paths)

        with TaskGroup("retrain", tooltip="train a challenger where configured, gate it, register it") as retrain:
            train = {
                "local": TrainOperator(task_id="train_local", doc_md=DOCS["train_local"], **paths),
                "kubernetes": KubernetesTrainOperator(task_id="train_kubernetes", doc_md=DOCS["train_kubernetes"],
                                                      **paths),
                "databricks": DatabricksTrainOperator(task_id="train_databricks", doc_md=DOCS["train_databricks"],
                                                      **paths),
            }
            backend = ConfigBranchOperator(task_id="choose_backend", config_path=str(model.path),
                                           setting="training.backend", override="{{ params.training_backend }}",
                                           branches={name: op.task_id for name, op in train.items()},
                                           doc_md=DOCS["choose_backend"])
            gates = GatesOperator(task_id="gates", retries=0, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
                                  doc_md=DOCS["gates"], **paths)
            register = RegisterOperator(task_id="register", doc_md=DOCS["register"], **paths)
            backend >> list(train.values()) >> gates >> register

        with TaskGroup("release", tooltip="[approve,] deploy with smoke test and rollback, then promote") as release:
            deploy = {
                "local": DeployLocalOperator(task_id="deploy_local", doc_md=DOCS["deploy_local"], **paths),
                "kubernetes": KubernetesDeployOperator(task_id="deploy_kubernetes", doc_md=DOCS["deploy_kubernetes"],
                                                       **paths),
            }
            target = ConfigBranchOperator(task_id="choose_target", config_path=str(model.path),
                                          setting="deploy.target", doc_md=DOCS["choose_target"],
                                          branches={name: op.task_id for name, op in deploy.items()})
            promote = PromoteOperator(task_id="promote", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
                                      outlets=[model_asset(config)], doc_md=DOCS["promote"], **paths)
            if config.promotion.approval_required:
                from ct_airflow.approval import PromotionApprovalOperator

                approve = PromotionApprovalOperator(
                    task_id="approve", doc_md=DOCS["approve"], retries=0,
                    response_timeout=timedelta(hours=config.promotion.approval_timeout_h), **paths)
                approve >> target
            target >> list(deploy.values()) >> promote

        skip = EmptyOperator(task_id="skip", doc_md=DOCS["skip"])
        decide = DecideBranchOperator(task_id="decide", retrain_task_id=backend.task_id,
                                      skip_task_id=skip.task_id, force_retrain="{{ params.force_retrain }}",
                                      doc_md=DOCS["decide"], **paths)
        record = RunRecordOperator(task_id="run_record", retries=0, trigger_rule=TriggerRule.ALL_DONE,
                                   doc_md=DOCS["run_record"], **paths)

        check >> decide >> [retrain, skip]
        retrain >> release
        [release, skip] >> record
        drift >> drift_report >> record
    return apply_task_timeouts(dag, config)  # execution_timeout of every task, per kind, from the config


#: dag_id -> DAG, for every model config that loads (dags/model_configs.py reports the others).
DAGS = {model.retrain_dag_id: retraining_dag(model) for model in load_catalog().models}

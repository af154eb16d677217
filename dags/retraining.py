"""Keep a tabular classifier fresh: check new data, retrain when it changed, gate, register, deploy.

One DAG serves every model: the `config` param names the model config (one YAML per model; see
README "Configuration"). Each run validates the data contract, checks drift (Evidently) and the
champion's performance, decides, and only when something changed trains a challenger, gates it,
registers it in MLflow, deploys it with a smoke test (rolling back on failure) and promotes it.
Every run ends with a run record, whatever it decided.

Training runs where `training_backend` (param) or the config's `training.backend` says: `local` (in
the worker), `kubernetes` (a pod) or `databricks` (a job run); deploying goes to `deploy.target`:
`local` (a process on 127.0.0.1) or `kubernetes` (the deployer pod patches the serving Deployment).
Both choices are branch tasks (ConfigBranchOperator) that read the config at run time.

Trigger from the UI ("Trigger DAG" form) or `airflow dags trigger retraining --conf '{...}'` with:
`config`, `reference_path`, `current_path` (override the config's data), `force_retrain` and
`training_backend`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, TaskGroup, TriggerRule

from ct_airflow.databricks import DatabricksTrainOperator
from ct_airflow.kubernetes import KubernetesDeployOperator, KubernetesTrainOperator
from ct_airflow.operators import (
    ConfigBranchOperator,
    DecideBranchOperator,
    DeployLocalOperator,
    DriftCheckOperator,
    GatesOperator,
    PerformanceCheckOperator,
    PromoteOperator,
    RegisterOperator,
    RunRecordOperator,
    TrainOperator,
    ValidateDataOperator,
)

DEFAULT_CONFIG = os.environ.get(
    "CT_DEFAULT_CONFIG", str(Path(__file__).resolve().parent.parent / "configs" / "employee-attrition.yaml"))


PATHS = {
    "config_path": "{{ params.config }}",
    "reference_path": "{{ params.reference_path }}",
    "current_path": "{{ params.current_path }}",
}

with DAG(
    dag_id=Path(__file__).stem,
    description=__doc__.split("\n")[0],
    doc_md=__doc__,
    schedule=os.environ.get("CT_SCHEDULE", "@daily"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["ml", "continuous-training"],
    default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "config": Param(DEFAULT_CONFIG, type="string", title="Model config",
                        description="Path of the model config YAML (one per model)."),
        "reference_path": Param(None, type=["null", "string"], title="Reference window",
                                description="CSV/Parquet/JSONL file or folder; empty = the config's data.reference."),
        "current_path": Param(None, type=["null", "string"], title="Current window",
                              description="Newest data (a prediction-log folder works); empty = data.current."),
        "force_retrain": Param(False, type="boolean", title="Force retrain",
                               description="Train a challenger even if no drift or decay is found "
                                           "(the gates still apply)."),
        "training_backend": Param(None, type=["null", "string"], enum=[None, "local", "kubernetes", "databricks"],
                                  title="Training backend",
                                  description="Where the challenger is trained: local (the worker), kubernetes "
                                              "(a pod) or databricks (a job run); empty = the config's "
                                              "training.backend."),
    },
) as dag:
    with TaskGroup("check", tooltip="data contract, drift and champion performance") as check:
        validate = ValidateDataOperator(task_id="validate_data", **PATHS)
        drift = DriftCheckOperator(task_id="drift", **PATHS)
        performance = PerformanceCheckOperator(task_id="performance", **PATHS)
        validate >> [drift, performance]

    with TaskGroup("retrain", tooltip="train a challenger where configured, gate it, register it") as retrain:
        train = {
            "local": TrainOperator(task_id="train_local", **PATHS),
            "kubernetes": KubernetesTrainOperator(task_id="train_kubernetes", **PATHS),
            "databricks": DatabricksTrainOperator(task_id="train_databricks", **PATHS),
        }
        backend = ConfigBranchOperator(task_id="choose_backend", config_path="{{ params.config }}",
                                       setting="training.backend", override="{{ params.training_backend }}",
                                       branches={name: op.task_id for name, op in train.items()})
        gates = GatesOperator(task_id="gates", retries=0, trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
                              **PATHS)
        register = RegisterOperator(task_id="register", **PATHS)
        backend >> list(train.values()) >> gates >> register

    with TaskGroup("release", tooltip="deploy with smoke test and rollback, then promote") as release:
        deploy = {
            "local": DeployLocalOperator(task_id="deploy_local", **PATHS),
            "kubernetes": KubernetesDeployOperator(task_id="deploy_kubernetes", **PATHS),
        }
        target = ConfigBranchOperator(task_id="choose_target", config_path="{{ params.config }}",
                                      setting="deploy.target",
                                      branches={name: op.task_id for name, op in deploy.items()})
        promote = PromoteOperator(task_id="promote", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, **PATHS)
        target >> list(deploy.values()) >> promote

    skip = EmptyOperator(task_id="skip")
    decide = DecideBranchOperator(task_id="decide", retrain_task_id=backend.task_id,
                                  skip_task_id=skip.task_id,
                                  force_retrain="{{ params.force_retrain }}", **PATHS)
    record = RunRecordOperator(task_id="run_record", retries=0, trigger_rule=TriggerRule.ALL_DONE, **PATHS)

    check >> decide >> [retrain, skip]
    retrain >> release
    [release, skip] >> record

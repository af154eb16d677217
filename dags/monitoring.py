"""Watch the served model's traffic and start a retraining run when its error rate or its outputs move.

One DAG per model config (`<name>.monitor`, on `monitoring.schedule`, default hourly). `check` reads the
model's prediction log (online and batch predictions, and the labels that came back through /feedback) for
the last `monitoring.window` and judges the champion's traffic (ml.monitor): the error rate on labelled
predictions against `monitoring.error_rate_factor` (1.5) x the champion's holdout error, and the output
(score) distribution against its holdout scores (`monitoring.on_output_drift`). When either breaches,
`trigger_retrain` starts `<name>.retrain` with the prediction log as its current window (and
`force_retrain` = `monitoring.force_retrain`: the gates still judge the challenger); else `healthy`.
XCom of `check`: `report` (the summary) and `retrain_conf`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param

from ct_airflow.catalog import Model, load_catalog
from ct_airflow.serving import MonitorBranchOperator


def monitoring_dag(model: Model) -> DAG:
    """The monitoring DAG of one model (wiring only)."""
    with DAG(
        dag_id=model.monitor_dag_id,
        description=f"{model.name}: " + __doc__.split("\n")[0],
        doc_md=f"**Model `{model.name}`**, config `{model.path}`.\n\n" + __doc__,
        schedule=model.monitor_schedule,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        render_template_as_native_obj=True,
        tags=["ml", "continuous-training", f"model:{model.name}", "monitoring"],
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30),
                      "execution_timeout": model.task_timeout},
        params={"prediction_log": Param(None, type=["null", "string"], title="Prediction log",
                                        description="The served model's prediction log; empty = "
                                                    "monitoring.prediction_log (or the local target's).")},
    ) as dag:
        trigger_retrain = TriggerDagRunOperator(
            task_id="trigger_retrain", trigger_dag_id=model.retrain_dag_id,
            conf="{{ ti.xcom_pull(task_ids='check', key='retrain_conf') }}",
            doc_md=f"Starts `{model.retrain_dag_id}` on the prediction log (the monitor's evidence is in the "
                   "`check` task's XCom `report`).")
        healthy = EmptyOperator(task_id="healthy", doc_md="Error rate and outputs within bounds.")
        check = MonitorBranchOperator(task_id="check", config_path=str(model.path),
                                      prediction_log="{{ params.prediction_log }}",
                                      trigger_task_id=trigger_retrain.task_id, healthy_task_id=healthy.task_id,
                                      doc_md="Error rate (feedback) and output drift of the champion's traffic.")
        check >> [trigger_retrain, healthy]
    return dag


DAGS = {model.monitor_dag_id: monitoring_dag(model) for model in load_catalog().models}

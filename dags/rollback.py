"""Roll a model back: serve an earlier version (smoke-tested) and move `champion` to it, in one run.

One DAG per model config (`<name>.rollback`, no schedule: triggered by a person or the REST API). Its one
task runs `ml.pipeline.rollback`, the same action as `python -m ml rollback`: the version is deployed
with the deploy step's smoke test (a failing one is rolled back and `champion` does not move), then
`champion` moves to it (kind `rollback` in the alias ledger, with who and why), recorded as a run of its
own with its run record. It emits the `<name>.champion` Asset event, so downstream DAGs follow.

Params: `version` (empty = the version the current champion replaced) and `reason` (recorded).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param

from ct_airflow.catalog import Model, apply_task_timeouts, load_catalog, model_asset
from ct_airflow.operators import RollbackOperator


def rollback_dag(model: Model) -> DAG:
    """The rollback DAG of one model (wiring only)."""
    with DAG(
        dag_id=model.rollback_dag_id,
        description=f"{model.name}: " + __doc__.split("\n")[0],
        doc_md=f"**Model `{model.name}`**, config `{model.path}`.\n\n" + __doc__,
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=["ml", "continuous-training", f"model:{model.name}", "rollback"],
        default_args={"owner": "ml-platform", "retries": 0, "execution_timeout": model.task_timeout},
        params={
            "version": Param(None, type=["null", "string"], pattern=r"^[0-9]+$", title="Version",
                             description="The registered version to serve and name champion; empty = the "
                                         "version the current champion replaced."),
            "reason": Param("rollback from the Airflow UI", type="string", minLength=1, title="Reason",
                            description="Why: recorded in the alias ledger and the run record."),
        },
    ) as dag:
        RollbackOperator(task_id="rollback", config_path=str(model.path), version="{{ params.version }}",
                         reason="{{ params.reason }}", outlets=[model_asset(model.config)],
                         doc_md="Deploys the version (smoke-tested), then moves `champion` to it; emits the "
                                "model Asset event. The links open the rollback's MLflow run and the version.")
    return apply_task_timeouts(dag, model.config)


DAGS = {model.rollback_dag_id: rollback_dag(model) for model in load_catalog().models}

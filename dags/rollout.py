"""Watch a canary or a shadow: evaluate the canary (promote or roll back), compare the shadow, every hour.

One DAG per model whose config sets `deploy.strategy: canary` or `shadow` (`<name>.rollout`). Its one task
runs `ml.rollout_checks.check_rollout`, the same look as `python -m ml canary evaluate` / `shadow-report`:
a canary is promoted once the fixed-horizon test on the feedback metric says it is not worse, rolled back
when it is, or at once when its error rate or latency breaks a bound (README "Safe rollout"); a shadow's
comparison (agreement, score distances, the metric on the labels) is stored in its MLflow run. With nothing
running the task succeeds and says so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG

from ct_airflow.catalog import Model, load_catalog
from ct_airflow.rollout import RolloutCheckOperator


def rollout_dag(model: Model) -> DAG:
    """The rollout check DAG of one model (wiring only)."""
    with DAG(
        dag_id=model.rollout_dag_id,
        description=f"{model.name}: " + __doc__.split("\n")[0],
        doc_md=f"**Model `{model.name}`**, config `{model.path}`.\n\n" + __doc__,
        schedule="@hourly",
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=["ml", "continuous-training", f"model:{model.name}", "rollout"],
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(minutes=5),
                      "execution_timeout": model.task_timeout},
    ) as dag:
        RolloutCheckOperator(task_id="check_rollout", config_path=str(model.path),
                             doc_md="One look at the running canary (its test and guardrails) or shadow (the "
                                    "comparison); the result is this task's XCom and the rollout's MLflow run.")
    return dag


DAGS = {model.rollout_dag_id: rollout_dag(model) for model in load_catalog().models
        if model.config.deploy.strategy != "replace"}

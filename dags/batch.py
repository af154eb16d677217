"""Score a dataset with the champion in batch: chunked (bounded memory), predictions with version and sha256.

One DAG per model config whose `batch.input_path` is set (`<name>.batch`). It runs when the model's
`<name>.champion` Asset gets an event (every promotion and rollback; `batch.on_promotion`, default on) and/or
on `batch.schedule` (cron). The scoring task reads `batch.input_path` (Parquet or CSV) chunk by chunk
(`batch.chunk_rows`), scores each chunk with the champion's ONNX file (sha256-verified, loaded as the server
loads it; a promotion-triggered run scores the version the event names), writes the predictions to
`batch.output_path` (Parquet: model_version and model_sha256 per row) and logs them to the prediction log
with `source: batch`, so drift checks and the monitor see batch traffic too.

Where it runs follows `batch.backend`: `local` (the worker) or `kubernetes` (a pod with the training image,
settings of training.kubernetes). Params: `input_path`, `output_path` (override the config's).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param

from ct_airflow.catalog import Model, load_catalog
from ct_airflow.operators import ConfigBranchOperator
from ct_airflow.serving import BatchScoreOperator, KubernetesBatchOperator


def batch_dag(model: Model) -> DAG:
    """The batch-scoring DAG of one model (wiring only)."""
    paths = {"config_path": str(model.path), "input_path": "{{ params.input_path }}",
             "output_path": "{{ params.output_path }}"}
    with DAG(
        dag_id=model.batch_dag_id,
        description=f"{model.name}: " + __doc__.split("\n")[0],
        doc_md=f"**Model `{model.name}`**, config `{model.path}`.\n\n" + __doc__,
        schedule=model.batch_schedule,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=["ml", "continuous-training", f"model:{model.name}", "batch"],
        default_args={"owner": "ml-platform", "retries": 1, "retry_delay": timedelta(seconds=30),
                      "execution_timeout": model.task_timeout},
        params={
            "input_path": Param(None, type=["null", "string"], title="Input",
                                description="Parquet file or folder, or CSV file; empty = batch.input_path."),
            "output_path": Param(None, type=["null", "string"], title="Output",
                                 description="A .parquet file or a folder; empty = batch.output_path."),
        },
    ) as dag:
        score = {
            "local": BatchScoreOperator(task_id="score_local", doc_md="Scores the input in the worker.", **paths),
            "kubernetes": KubernetesBatchOperator(task_id="score_kubernetes", doc_md="Scores the input in a pod.",
                                                  **paths),
        }
        backend = ConfigBranchOperator(task_id="choose_backend", config_path=str(model.path),
                                       setting="batch.backend", branches={k: op.task_id for k, op in score.items()},
                                       doc_md="Follows the config's `batch.backend`.")
        backend >> list(score.values())
    return dag


DAGS = {model.batch_dag_id: batch_dag(model) for model in load_catalog().models if model.has_batch}

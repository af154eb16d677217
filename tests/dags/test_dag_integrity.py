"""DAG integrity: imports cleanly, parses fast without heavy libraries or connections, and carries
the metadata the conventions require (tags, retries, typed params, schedule, one active run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

HEAVY = ("pandas", "sklearn", "mlflow", "evidently", "onnxruntime", "onnx", "skl2onnx", "numpy", "kubernetes",
         "kubernetes_asyncio", "databricks")


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"retraining"}


def test_dag_metadata(dagbag):
    dag = dagbag.get_dag("retraining")
    assert dag.tags and dag.max_active_runs == 1 and dag.catchup is False
    assert dag.schedule is not None and dag.start_date.tzinfo is not None
    assert dag.doc_md and dag.description
    assert {"config", "reference_path", "current_path", "force_retrain"} <= set(dag.params)
    for name, param in dag.params.items():
        param = dag.params.get_param(name)
        assert param.schema.get("type") and param.schema.get("title") and param.description, name
    for task in dag.tasks:
        assert task.retries is not None, task.task_id
    record = dag.get_task("run_record")
    assert str(record.trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert {t.task_id for t in dag.get_task("decide").downstream_list} >= {"skip"}


def test_parse_is_fast_and_imports_nothing_heavy():
    """Parse in a fresh interpreter with no MLflow, network or Airflow connections configured."""
    code = f"""
import json, sys, time
import airflow.sdk  # Airflow itself is not the DAG's cost
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder={str(REPO / 'dags')!r})
elapsed = time.perf_counter() - start
print(json.dumps({{"elapsed": elapsed, "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
                  "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # would fail loudly if anything connected
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["heavy"] == [], f"heavy modules imported at parse time: {result['heavy']}"
    assert result["elapsed"] < 2.0, f"DAG parse took {result['elapsed']:.2f}s"

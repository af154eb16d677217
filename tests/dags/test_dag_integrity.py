"""DAG integrity: one retraining and one rollback DAG per model config, a broken config as the import error
that names it while the other models' DAGs load, parse time bounded without heavy libraries or connections,
and the metadata the conventions require (tags, retries, execution_timeout, typed params, one active run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEMO_CONFIG, REPO, write_config

HEAVY = ("pandas", "sklearn", "mlflow", "evidently", "onnxruntime", "onnx", "skl2onnx", "numpy", "kubernetes",
         "kubernetes_asyncio", "databricks")


def bag(config_dir: Path | None, monkeypatch: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    if config_dir is None:
        monkeypatch.delenv("CT_CONFIG_DIR", raising=False)
    else:
        monkeypatch.setenv("CT_CONFIG_DIR", str(config_dir))
    return DagBag(dag_folder=str(REPO / "dags"))


def model_folder(folder: Path, **models: dict) -> Path:
    """A config folder with one config per keyword (file stem -> changes to the demo config)."""
    for stem, changes in models.items():
        path = write_config(folder / "tmp", **changes)
        path.rename(folder / f"{stem}.yaml")
    return folder


@pytest.fixture(scope="module")
def repo_bag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    os.environ.pop("CT_CONFIG_DIR", None)
    return DagBag(dag_folder=str(REPO / "dags"))


def test_the_repository_configs_make_a_dag_pair_each(repo_bag):
    assert repo_bag.import_errors == {}
    configs = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "configs").glob("*.yaml"))]
    expected = {f"{c['name']}.{kind}" for c in configs for kind in ("retrain", "rollback", "monitor")}
    expected |= {f"{c['name']}.batch" for c in configs if (c.get("batch") or {}).get("input_path")}
    assert set(repo_bag.dag_ids) == expected


def test_dag_metadata(repo_bag):
    for dag in repo_bag.dags.values():
        assert dag.tags and dag.max_active_runs == 1 and dag.catchup is False, dag.dag_id
        assert dag.start_date.tzinfo is not None and dag.doc_md and dag.description
        for name in dag.params:
            param = dag.params.get_param(name)
            assert param.schema.get("type") and param.schema.get("title") and param.description, name
        for task in dag.tasks:
            assert task.retries is not None and task.doc_md, task.task_id
            assert task.execution_timeout is not None and task.execution_timeout.total_seconds() >= 60, task.task_id
    dag = repo_bag.get_dag("employee-attrition.retrain")
    assert dag.schedule is not None
    assert {"reference_path", "current_path", "force_retrain", "training_backend"} <= set(dag.params)
    backend = dag.params.get_param("training_backend").schema
    assert backend["values_display"]["null"] == "as configured (local)"  # not a bare `null` in the form
    assert set(backend["values_display"]) == {"null", *(v for v in backend["enum"] if v)}
    record = dag.get_task("run_record")
    assert str(record.trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert {t.task_id for t in dag.get_task("decide").downstream_list} >= {"skip"}
    assert {a.name for a in dag.get_task("release.promote").outlets} == {"employee-attrition.champion"}
    assert {link.name for link in dag.get_task("drift_report").operator_extra_links} == {"MLflow run", "Drift report"}
    # the report is beside the decision path: after drift, before the record, and nothing of the decision waits for it
    assert dag.get_task("drift_report").upstream_task_ids == {"check.drift"}
    assert dag.get_task("drift_report").downstream_task_ids == {"run_record"}
    assert "approve" not in {t.task_id.split(".")[-1] for t in dag.tasks}  # promotion.approval: auto
    rollback = repo_bag.get_dag("employee-attrition.rollback")
    assert rollback.schedule is None and {"version", "reason"} <= set(rollback.params)


def test_two_configs_make_two_models_and_a_broken_third_is_an_import_error_naming_it(tmp_path, airflow_db,
                                                                                   monkeypatch):
    folder = model_folder(tmp_path, alpha={"name": "alpha", "schedule": "0 6 * * *"},
                          beta={"name": "beta", "schedule": {"assets": ["current_window"]},
                                "promotion": {"approval": "required", "approval_timeout_h": 2.0}})
    (folder / "broken.yaml").write_text(yaml.safe_dump({**yaml.safe_load(DEMO_CONFIG.read_text()),
                                                        "name": "gamma", "gates": {"max_regresion": 0.1}}))
    (folder / "bad-cron.yaml").write_text(yaml.safe_dump({**yaml.safe_load(DEMO_CONFIG.read_text()),
                                                          "name": "delta", "schedule": "every day"}))
    dags = bag(folder, monkeypatch)
    kinds = ("retrain", "rollback", "monitor")
    assert set(dags.dag_ids) == {f"{m}.{kind}" for m in ("alpha", "beta") for kind in kinds}
    (where, error), = dags.import_errors.items()
    assert where.endswith("model_configs.py")
    assert f"{folder / 'broken.yaml'}" in error and "gates.max_regresion: unknown key" in error
    assert f"{folder / 'bad-cron.yaml'}" in error and "'every day' is neither a cron expression" in error
    alpha, beta = dags.dags["alpha.retrain"], dags.dags["beta.retrain"]
    assert alpha.timetable.expression == "0 6 * * *"
    assert [a.name for a in beta.timetable.asset_condition.objects] == ["beta.current_window"]
    # approval required: a human-in-the-loop task between register and the release, timing out as configured
    approve = beta.get_task("release.approve")
    assert type(approve).__name__ == "PromotionApprovalOperator" and approve.response_timeout.total_seconds() == 7200
    assert {t.task_id for t in approve.upstream_list} == {"retrain.register"}
    assert {t.task_id for t in approve.downstream_list} == {"release.choose_target"}
    assert approve.defaults == ["Reject"]


def test_a_model_name_used_twice_keeps_the_first_file(tmp_path, airflow_db, monkeypatch):
    folder = model_folder(tmp_path, a={"name": "same"}, b={"name": "same"})
    dags = bag(folder, monkeypatch)
    assert set(dags.dag_ids) == {"same.retrain", "same.rollback", "same.monitor"}
    (error,) = dags.import_errors.values()
    assert f"{folder / 'b.yaml'}: name 'same' is already the model of {folder / 'a.yaml'}" in error


def test_parse_imports_nothing_heavy(tmp_path):
    """Ten models (thirty DAGs: retrain, rollback, monitor) parse in a fresh interpreter with no MLflow, network
    or Airflow connections. How long parsing takes is benchmarks/dag_parse_bench.py's to measure."""
    folder = model_folder(tmp_path, **{f"m{i}": {"name": f"model-{i}"} for i in range(10)})
    code = f"""
import json, sys, time
import airflow.sdk  # Airflow itself is not the DAGs' cost
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder={str(REPO / 'dags')!r})
elapsed = time.perf_counter() - start
print(json.dumps({{"elapsed": elapsed, "dags": len(bag.dag_ids),
                  "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
                  "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))}
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # would fail loudly if anything connected
    env["CT_CONFIG_DIR"] = str(folder)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["dags"] == 30
    assert result["heavy"] == [], f"heavy modules imported at parse time: {result['heavy']}"
    print(f"\n30 DAGs (10 models) parsed in {result['elapsed']:.2f}s")


def test_batch_and_monitor_dags(tmp_path, airflow_db, monkeypatch):
    """A model with batch.input_path gets `<name>.batch` (on its champion Asset and/or a cron), every model a
    `<name>.monitor` that branches to a TriggerDagRunOperator of its own retraining DAG."""
    folder = model_folder(tmp_path, a={"name": "alpha", "batch": {"input_path": "rows.parquet"}},
                          b={"name": "beta", "batch": {"input_path": "rows.csv", "schedule": "0 3 * * *"},
                             "monitoring": {"schedule": None}},
                          c={"name": "gamma", "batch": {"input_path": "x.csv", "schedule": "0 3 * * *",
                                                        "on_promotion": False}})
    dags = bag(folder, monkeypatch)
    assert dags.import_errors == {}
    assert {"alpha.batch", "beta.batch", "gamma.batch", "alpha.monitor"} <= set(dags.dag_ids)
    alpha = dags.dags["alpha.batch"]
    assert [a.name for a in alpha.timetable.asset_condition.objects] == ["alpha.champion"]
    beta = dags.dags["beta.batch"]
    assert beta.timetable.timetable.expression == "0 3 * * *"  # a cron or the promotion event
    assert [a.name for a in beta.timetable.asset_condition.objects] == ["beta.champion"]
    assert dags.dags["gamma.batch"].timetable.expression == "0 3 * * *"
    assert {t.task_id for t in alpha.get_task("choose_backend").downstream_list} == {"score_local",
                                                                                     "score_kubernetes"}
    monitor = dags.dags["alpha.monitor"]
    assert monitor.timetable.expression == "0 * * * *" or "hour" in str(monitor.timetable.summary).lower()
    assert dags.dags["beta.monitor"].schedule is None
    trigger = monitor.get_task("trigger_retrain")
    assert type(trigger).__name__ == "TriggerDagRunOperator" and trigger.trigger_dag_id == "alpha.retrain"
    assert {t.task_id for t in monitor.get_task("check").downstream_list} == {"trigger_retrain", "healthy"}
    for dag in (alpha, beta, monitor):
        assert dag.tags and dag.max_active_runs == 1 and dag.doc_md and dag.description
        assert all(t.doc_md and t.execution_timeout for t in dag.tasks)


def test_a_preset_with_on_promotion_is_an_import_error(tmp_path, airflow_db, monkeypatch):
    folder = model_folder(tmp_path, a={"name": "alpha", "batch": {"input_path": "x.csv", "schedule": "@daily"}})
    dags = bag(folder, monkeypatch)
    (error,) = dags.import_errors.values()
    assert "batch.schedule: with batch.on_promotion give a cron expression" in error

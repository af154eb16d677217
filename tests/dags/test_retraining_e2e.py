"""A model's retraining DAG (`<name>.retrain`) end to end with `dag.test()`: real Airflow (SQLite), a real
MLflow store, the ONNX model served by a real process on 127.0.0.1. The scenarios build on each other, in
file order, as a model's life would: bootstrap (and what it leaves in MLflow and on the DAG run), quiet
window, covariate drift, forced re-run of one DAG run, concept drift, a worse challenger, bad data, then
rollbacks: the CLI's, the rollback DAG's (`<name>.rollback`) and `deploy --version`.
"""

from __future__ import annotations

import json
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import DATA, write_config

pytestmark = pytest.mark.e2e
MODEL = "employee-attrition"
_DATES = iter(datetime(2026, 3, 1, tzinfo=UTC) + timedelta(hours=i) for i in range(100))


@pytest.fixture(scope="module")
def env(module_ct_home: Path, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import os

    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    folder = tmp_path_factory.mktemp("config")
    config = write_config(folder)
    os.environ["CT_CONFIG_DIR"] = str(folder)  # the DAG files build one DAG pair per config in this folder
    try:
        bag = DagBag(dag_folder=str(REPO / "dags"))
    finally:
        os.environ.pop("CT_CONFIG_DIR")
    assert not bag.import_errors, bag.import_errors
    assert set(bag.dag_ids) == {f"{MODEL}.retrain", f"{MODEL}.rollback", f"{MODEL}.monitor"}
    return {"dag": bag.get_dag(f"{MODEL}.retrain"), "rollback": bag.get_dag(f"{MODEL}.rollback"),
            "config": str(config), "home": module_ct_home,
            "port": __import__("yaml").safe_load(config.read_text())["deploy"]["port"]}


def run(env: dict, current: str | None = None, logical_date: datetime | None = None, **conf: object) -> dict:
    # Every param explicitly: dag.test() keeps the previous run's conf in the DAG's params otherwise.
    params = {"reference_path": None, "current_path": None, "force_retrain": False, "training_backend": None,
              **conf}
    if current:
        params["current_path"] = current if "://" in current else str(DATA / current)
    when = logical_date or next(_DATES)
    # dag.test() derives the run id from run_after: the same date finds (and clears) the same DAG run.
    return finished(env, env["dag"].test(logical_date=when, run_after=when, run_conf=params))


def finished(env: dict, dag_run: object, run_key: str | None = None) -> dict:
    """The run record of a finished DAG run, with the DAG run's state, task states and note."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from ml.tracking import safe_name

    record_path = env["home"] / "runs" / MODEL / safe_name(run_key or dag_run.run_id) / "run_record.json"
    record = json.loads(record_path.read_text())
    record["_state"] = str(dag_run.state)
    record["_tasks"] = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    record["_logical_date"] = dag_run.logical_date
    with create_session() as session:
        stored = session.query(DagRun).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one()
        record["_note"] = stored.note
    return record


def registry() -> tuple[list[str], str | None]:
    from ml.registry import CHAMPION, version_by_alias
    from ml.tracking import mlflow_client

    client = mlflow_client()
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    champion = version_by_alias(client, MODEL, CHAMPION)
    return versions, str(champion.version) if champion else None


def served_version(env: dict) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{env['port']}/ready", timeout=5) as response:
        return json.loads(response.read())["model_version"]


def test_first_run_bootstraps_v1_and_serves_it(env):
    record = run(env, "current_unlabelled.csv")
    env["bootstrap"] = record
    assert record["_state"] == "success", record["errors"]
    assert record["status"] == "promoted" and record["decision"] == "retrain"
    assert record["triggers"] == ["bootstrap"]
    gate = record["gates"]["challenger_vs_champion"]
    assert gate["passed"] and "no-skill baseline" in gate["detail"]  # an explicit bootstrap case
    assert set(record["gates"]) >= {"min_roc_auc", "challenger_vs_champion", "fairness", "onnx_parity", "latency",
                                    "size"}
    assert record["challenger_version"] == "1" and record["promoted"]
    assert record["deployment"]["status"] == "deployed"
    assert registry() == (["1"], "1")
    assert served_version(env) == "1"
    assert record["_tasks"]["skip"] == "skipped"
    # the backend and target branches ran the local tasks only
    assert record["_tasks"]["retrain.train_local"] == "success"
    assert record["_tasks"]["retrain.train_kubernetes"] == record["_tasks"]["retrain.train_databricks"] == "skipped"
    assert record["_tasks"]["release.deploy_local"] == "success"
    assert record["_tasks"]["release.deploy_kubernetes"] == "skipped"
    # the decision and its reason are the DAG run's note
    assert record["_note"].startswith("**promoted** · decision **retrain**: ") and "champion → v1" in record["_note"]


def test_the_registered_version_follows_mlflow_conventions(env):
    """Signature and input example, datasets whose digests are the window hashes, estimator params, the git
    commit, a Markdown description (decision, gates, data), the config and its hash as version artifacts."""
    import mlflow

    from ml.config import config_sha256
    from ml.tracking import mlflow_client

    client = mlflow_client()
    version = client.get_model_version(MODEL, "1")
    record = env["bootstrap"]
    assert "**Decision:** retrain: " in version.description
    assert "| challenger_vs_champion | pass |" in version.description
    assert record["data"]["current_sha256"][:12] in version.description
    info = mlflow.models.get_model_info(f"models:/{MODEL}/1")
    assert info.signature is not None and info.saved_input_example_info is not None
    assert set(info.signature.inputs.input_names()) >= {"age", "department"}
    run = client.get_run(version.run_id)
    datasets = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(datasets) == {f"{MODEL}.reference", f"{MODEL}.current"}
    for window in ("reference", "current"):
        dataset = datasets[f"{MODEL}.{window}"]
        assert dataset.dataset.digest == record["data"][f"{window}_sha256"][:36]
        assert {t.key: t.value for t in dataset.tags}["ct.sha256"] == record["data"][f"{window}_sha256"]
    assert run.data.params["estimator.C"] == "1.0" and "estimator.max_iter" in run.data.params
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    assert run.data.tags["mlflow.note.content"].startswith("**promoted**")
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(env["home"] / "v1")))
    assert (files / "extra_files" / "model.yaml").read_text() == Path(env["config"]).read_text()
    assert (files / "extra_files" / "model.yaml.sha256").read_text().split()[0] == config_sha256(env["config"])
    assert version.tags["ct.config_sha256"] == config_sha256(env["config"])


def test_no_drift_window_skips(env):
    record = run(env, "current_no_drift.csv")
    assert record["_state"] == "success"
    assert record["decision"] == "skip" and record["status"] == "skipped"
    assert "no dataset drift" in record["reason"] and "no performance decay" in record["reason"]
    assert record["drift"]["dataset_drift"] is False
    assert record["performance"]["champion_version"] == "1"
    assert record["_tasks"]["retrain.train_local"] == "skipped" and record["_tasks"]["run_record"] == "success"
    assert registry() == (["1"], "1")


def test_covariate_drift_retrains_and_v2_serves(env):
    record = run(env, "current_covariate_drift.csv")
    assert record["_state"] == "success", record["errors"]
    assert record["decision"] == "retrain" and "data_drift" in record["triggers"]
    drifted = {name for name, f in record["drift"]["features"].items() if f["drifted"]}
    assert {"satisfaction_score", "work_hours"} <= drifted
    assert all(g["passed"] for g in record["gates"].values())
    assert "champion v1" in record["gates"]["challenger_vs_champion"]["detail"]
    assert record["challenger_version"] == "2" and record["status"] == "promoted"
    assert registry() == (["1", "2"], "2")
    assert served_version(env) == "2"
    # the Evidently report, rendered beside the decision path, is in the record the run ended with
    assert record["_tasks"]["drift_report"] == "success"
    assert "ct-drift-banner" in Path(record["drift"]["report"]).read_text(encoding="utf-8")


def test_rerunning_the_same_dag_run_creates_no_second_version(env):
    first = run(env, "current_covariate_drift.csv", force_retrain=True)
    assert first["_state"] == "success", first["errors"]
    assert first["triggers"] == ["forced"] and first["challenger_version"] == "3"
    again = run(env, "current_covariate_drift.csv", logical_date=first["_logical_date"], force_retrain=True)
    assert again["run_key"] == first["run_key"] and again["_state"] == "success", again["errors"]
    assert again["challenger_version"] == "3"
    assert again["deployment"]["status"] == "unchanged"
    assert registry() == (["1", "2", "3"], "3")


def test_concept_drift_retrains_because_of_performance_decay(env):
    record = run(env, "current_concept_drift.csv")
    assert record["decision"] == "retrain"
    assert record["triggers"] == ["performance_decay"]
    assert record["drift"]["dataset_drift"] is False
    assert record["reason"].startswith("performance decay of champion v3")
    assert "no dataset drift" in record["reason"]
    assert record["performance"]["decayed"] is True
    assert record["performance"]["on_current"] < record["performance"]["on_reference"] - 0.05
    assert record["_state"] == "success", record["errors"]
    assert record["status"] == "promoted"
    # both windows were tried; the reference labels follow the old relationship, so current-only wins
    assert record["training"]["window"] == "current"
    assert record["training"]["candidates"]["current"] > record["training"]["candidates"]["all"]
    assert registry() == (["1", "2", "3", "4"], "4")


WEAK = {"estimator": "random_forest", "params": {"n_estimators": 2, "max_depth": 1}}


@contextmanager
def config_for_one_run(env: dict, tmp_path: Path, **changes: object):
    """The DAG reads its config file at run time: changed settings in the same file, for one run."""
    config = Path(env["config"])
    original = config.read_text()
    config.write_text(write_config(tmp_path, deploy={"port": env["port"]}, **changes).read_text())
    try:
        yield
    finally:
        config.write_text(original)


def test_worse_challenger_is_rejected_champion_stays_and_the_run_is_green(env, tmp_path):
    """The champion is healthy on this window: rejecting a worse challenger is the right decision."""
    with config_for_one_run(env, tmp_path, model=WEAK):
        record = run(env, "current_concept_drift.csv", force_retrain=True)
    assert record["_state"] == "success", record["errors"]
    assert record["status"] == "rejected" and record["champion_kept"] is True and record["notify"] is None
    assert "challenger_vs_champion" in record["failed_gates"]
    assert record["gates"]["challenger_vs_champion"]["outcome"] == "worse"
    assert record["challenger_version"] is None and not record["promoted"]
    assert record["_tasks"]["retrain.gates"] == "skipped"  # stopped without failing: it says why
    assert record["_tasks"]["retrain.register"] == "skipped" and record["_tasks"]["run_record"] == "success"
    assert registry() == (["1", "2", "3", "4"], "4")
    assert served_version(env) == "4"


@pytest.mark.parametrize(("file", "problem"), [
    ("bad_missing_column.csv", "column 'salary' missing from current window"),
    ("bad_wrong_type.csv", "current window: 27 of 500 rows (5.4%) break the contract (column 'age' not numeric"),
    ("bad_all_nan.csv", "column 'satisfaction_score' in current window is entirely empty"),
    ("bad_empty.csv", "has 0 rows"),
])
def test_bad_data_fails_closed(env, file, problem):
    record = run(env, file, force_retrain=True)
    assert record["_state"] == "failed"
    assert record["status"] == "blocked" and record["decision"] == "blocked"
    assert any(problem in p for p in record["contract"]["problems"]), record["contract"]
    assert problem in record["reason"]
    assert record["_tasks"]["check.validate_data"] == "failed"
    assert record["_tasks"]["retrain.train_local"] == "upstream_failed"
    assert record["challenger_version"] is None
    assert registry() == (["1", "2", "3", "4"], "4")
    assert served_version(env) == "4"


def _hostile_window(kind: str, folder: Path) -> str:
    import pandas as pd

    rows = pd.read_csv(DATA / "current_no_drift.csv")
    path = folder / f"{kind}.csv"
    if kind == "url":
        return "http://127.0.0.1:9/secret.csv"
    if kind == "duplicate_columns":
        text = rows.to_csv(index=False)
        path.write_text(text.replace("salary", "age", 1))
    elif kind == "truncated":
        path.write_text(rows.to_csv(index=False)[:-12])
    elif kind == "parquet_named_csv":
        rows.to_parquet(path, index=False)
    else:  # oversized: above the default data.max_rows
        path.write_text(rows.head(1).to_csv(index=False) + rows.iloc[1:2].to_csv(index=False, header=False) * 2_000_001)
    return str(path)


@pytest.mark.parametrize(("kind", "problem"), [
    ("url", "window path 'http://127.0.0.1:9/secret.csv': URLs (http://) are not read"),
    ("duplicate_columns", "duplicate column names ['age'] in the header"),
    ("truncated", "looks truncated: its last line has no line end"),
    ("parquet_named_csv", "is a Parquet file (magic bytes PAR1) named .csv"),
    ("oversized", "above data.max_rows 2,000,000"),
])
def test_hostile_windows_fail_closed_naming_the_problem(env, tmp_path, kind, problem):
    before = registry()
    record = run(env, _hostile_window(kind, tmp_path), force_retrain=True)
    assert record["_state"] == "failed"
    assert record["status"] == "blocked" and record["decision"] == "blocked"
    assert any(problem in p for p in record["contract"]["problems"]), record["contract"]
    assert record["_tasks"]["retrain.train_local"] == "upstream_failed"
    assert record["challenger_version"] is None
    assert registry() == before  # nothing registered, champion unchanged
    assert served_version(env) == before[1]


def test_rollback_is_one_action(env):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-m", "ml", "rollback", "--config", env["config"], "--reason", "test"],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "CT_HOME": str(env["home"])})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert (result["rolled_back_from"], result["champion"]) == ("4", "3")
    assert result["move"]["kind"] == "rollback" and "rollback of v4 to v3: test" in result["move"]["reason"]
    assert registry() == (["1", "2", "3", "4"], "3")
    assert served_version(env) == "3"


def rollback_dag(env: dict, **params: object) -> dict:
    when = next(_DATES)
    conf = {"version": None, "reason": "test", **params}
    dag_run = env["rollback"].test(logical_date=when, run_after=when, run_conf=conf)
    return finished(env, dag_run, run_key=f"rollback-{dag_run.run_id}")


def test_rollback_dag_restores_the_previous_champion_and_an_explicit_version(env):
    from ml.registry import alias_log
    from ml.tracking import mlflow_client

    back = rollback_dag(env)  # v3 (the CLI's rollback target) had replaced v2
    assert back["_state"] == "success" and back["status"] == "promoted", back["errors"]
    assert back["decision"] == "rollback" and "rollback of v3 to v2: test" in back["reason"]
    assert registry() == (["1", "2", "3", "4"], "2") and served_version(env) == "2"
    again = rollback_dag(env, version="4")
    assert again["_state"] == "success" and registry()[1] == "4" and served_version(env) == "4"
    assert again["_note"].startswith("**promoted** · decision **rollback**")
    moves = [(m["version"], m["previous"], m["kind"]) for m in alias_log(mlflow_client(), MODEL)
             if m["alias"] == "champion"]
    assert moves[-3:] == [("3", "4", "rollback"), ("2", "3", "rollback"), ("4", "2", "rollback")]
    when = next(_DATES)  # v4 is the champion already: the task fails and nothing moves
    refused = env["rollback"].test(logical_date=when, run_after=when, run_conf={"version": "4", "reason": "again"})
    assert str(refused.state) == "failed" and registry()[1] == "4" and served_version(env) == "4"


def test_cli_deploy_of_a_version_moves_champion_with_it(env):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-m", "ml", "deploy", "--config", env["config"], "--version", "3"],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "CT_HOME": str(env["home"])})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["status"] == "deployed"
    assert registry() == (["1", "2", "3", "4"], "3") and served_version(env) == "3"  # alias and server in step


def test_a_decayed_champion_with_no_acceptable_challenger_fails_and_notifies(env, tmp_path, monkeypatch):
    """After the CLI deploy v3 serves again; on the concept-drift window it has decayed, and the only
    challenger on offer is a worse one: the run fails and the outcome is posted to the alert webhook."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append({"path": self.path, "auth": self.headers.get("Authorization"),
                             "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_CT_ALERTS", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": server.server_port, "schema": "alerts",
         "password": "alert-token"}))
    try:
        with config_for_one_run(env, tmp_path, model=WEAK, notify={"connection_id": "ct_alerts"}):
            record = run(env, "current_concept_drift.csv")
    finally:
        server.shutdown()
    assert record["performance"]["decayed"] is True and record["triggers"] == ["performance_decay"]
    assert record["_state"] == "failed" and record["status"] == "rejected" and record["champion_kept"] is False
    assert "champion v3 has decayed: no acceptable challenger" in record["notify"]
    assert record["_tasks"]["retrain.gates"] == "failed"
    (alert,) = received
    assert alert["path"] == "/alerts" and alert["auth"] == "Bearer alert-token"
    assert alert["body"]["status"] == "rejected" and alert["body"]["rule"] == "performance_decay"
    assert alert["body"]["notify"] == record["notify"]
    assert registry() == (["1", "2", "3", "4"], "3")


def test_a_poisoned_row_among_good_ones_does_not_block_the_window(env, tmp_path):
    # last in the file: the run may retrain, and no scenario after it depends on the registry
    import pandas as pd

    rows = pd.read_csv(DATA / "current_no_drift.csv")
    rows["age"] = rows["age"].astype(object)
    rows.loc[10, "age"] = 200
    rows.loc[11, "satisfaction_score"] = "very"
    path = tmp_path / "poisoned.csv"
    rows.to_csv(path, index=False)
    record = run(env, str(path))
    assert record["_tasks"]["check.validate_data"] == "success", record["errors"]
    assert record["decision"] != "blocked"
    quarantine = record["contract"]["quarantine"]["current"]
    assert quarantine["dropped"] == 2 and quarantine["rows"] == 2000
    assert set(quarantine["reasons"]) == {"column 'age' outside [16.0, 80.0]",
                                          "column 'satisfaction_score' not numeric"}

"""The monitor end to end: a champion bootstrapped by the real retraining DAG (`dag.test()`, SQLite Airflow,
MLflow store) serving on 127.0.0.1, real traffic and feedback through its HTTP API, then `<name>.monitor`
(`dag.test()`): healthy while labels are few, then the error rate reaches monitoring.error_rate_factor x the
holdout baseline and `trigger_retrain` creates a `<name>.retrain` run on the prediction log, which runs and
retrains."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATA, write_config

pytestmark = pytest.mark.e2e
MODEL = "employee-attrition"
FEATURES = ["age", "tenure", "satisfaction_score", "performance_rating", "work_hours", "projects_count",
            "promotion_flag", "salary", "department"]


@pytest.fixture(scope="module")
def env(module_ct_home: Path, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import os

    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    folder = tmp_path_factory.mktemp("config")
    config = write_config(folder, monitoring={"min_labelled": 100, "window": "24h"})
    os.environ["CT_CONFIG_DIR"] = str(folder)
    try:
        bag = DagBag(dag_folder=str(REPO / "dags"))
    finally:
        os.environ.pop("CT_CONFIG_DIR")
    assert not bag.import_errors, bag.import_errors
    now = datetime.now(UTC).replace(microsecond=0)
    params = {"reference_path": None, "current_path": None, "force_retrain": False, "training_backend": None}
    bootstrap = bag.get_dag(f"{MODEL}.retrain").test(logical_date=now - timedelta(hours=2),
                                                     run_after=now - timedelta(hours=2), run_conf=params)
    assert str(bootstrap.state) == "success"
    from ml.deploy.local import read_state

    return {"bag": bag, "config": config, "url": read_state(MODEL).url, "now": now, "home": module_ct_home}


def _traffic(url: str, csv: str, rows: int, label_share: float) -> int:
    """POST rows of a bundled window to the server, then their true labels to /feedback; labelled count."""
    import pandas as pd

    frame = pd.read_csv(DATA / csv).head(rows)
    records = [{c: (str(v) if c == "department" else float(v)) for c, v in r.items()}
               for r in frame[FEATURES].to_dict(orient="records")]
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/predict/batch", json={"records": records})
        assert answer.status_code == 200, answer.text
        ids = [p["prediction_id"] for p in answer.json()["predictions"]]
        labelled = int(len(ids) * label_share)
        items = [{"prediction_id": i, "label": int(y)} for i, y in zip(ids[:labelled], frame["attrition"],
                                                                      strict=False)]
        assert client.post("/feedback", json={"items": items}).status_code == 202
    return labelled


def _now() -> datetime:
    """The time the next DAG run is for: after every prediction sent so far (its window ends there)."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)


def _monitor(env: dict) -> object:
    when = _now()
    return env["bag"].get_dag(f"{MODEL}.monitor").test(logical_date=when, run_after=when,
                                                       run_conf={"prediction_log": None})


def _report(dag_run: object) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id="check",
                                                 key="report").one()
    return XComModel.deserialize_value(row)


def _wait_flushed(env: dict, labelled: int) -> None:
    import time

    from ml.config import load_config
    from ml.deploy.local import served_log
    from ml.predlog import read_feedback

    root = served_log(load_config(env["config"]))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (root / "feedback").is_dir() and len(read_feedback(root)) >= labelled:
            return
        time.sleep(0.1)
    raise AssertionError("the server did not write the feedback within 10 s")


def test_few_labels_are_healthy(env: dict) -> None:
    labelled = _traffic(env["url"], "current_no_drift.csv", 300, 0.2)
    _wait_flushed(env, labelled)
    run = _monitor(env)
    tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert tasks == {"check": "success", "healthy": "success", "trigger_retrain": "skipped"}, tasks
    report = _report(run)
    assert report["retrain"] is False and report["predictions"] == 300
    assert "monitoring.min_labelled 100" in report["reasons"][0]


def test_error_rate_breach_triggers_a_retraining_run(env: dict) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from ml.config import load_config
    from ml.monitor import check_serving

    labelled = _traffic(env["url"], "current_concept_drift.csv", 600, 1.0)
    _wait_flushed(env, labelled + 60)
    direct = check_serving(load_config(env["config"]), as_of=_now())
    assert direct.error_rate.breached, direct.to_dict()
    assert direct.error_rate.rate >= 1.5 * direct.error_rate.baseline
    print(f"\nerror rate {direct.error_rate.rate:.3f} vs baseline {direct.error_rate.baseline:.3f}; "
          f"{direct.output.signal if direct.output else None}: {direct.output.to_dict() if direct.output else None}")
    run = _monitor(env)
    tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert tasks == {"check": "success", "healthy": "skipped", "trigger_retrain": "success"}, tasks
    report = _report(run)
    assert report["retrain"] is True and "x holdout baseline" in report["reasons"][0]
    with create_session() as session:
        triggered = session.query(DagRun).filter_by(dag_id=f"{MODEL}.retrain").order_by(DagRun.id.desc()).first()
        conf = dict(triggered.conf)
    assert conf["current_path"] == report["prediction_log"] and conf["force_retrain"] is True
    when = _now()
    retrain = env["bag"].get_dag(f"{MODEL}.retrain").test(logical_date=when, run_after=when, run_conf=conf)
    tasks = {ti.task_id: str(ti.state) for ti in retrain.get_task_instances()}
    assert tasks["retrain.train_local"] == "success", tasks
    import json

    from ml.tracking import safe_name

    record = json.loads((env["home"] / "runs" / MODEL / safe_name(retrain.run_id) / "run_record.json").read_text())
    assert record["decision"] == "retrain" and record["rule"] == "forced", record["reason"]
    assert record["data"]["rows"]["current"] == 900  # the served traffic (smoke-test lines left out)
    assert record["drift"]["output"]["champion_version"] == "1"  # the output drift is in the record too

"""The loop closes: traffic served and logged by the real server is the current window of the drift
step (`python -m ml drift --current <log folder>`), a shifted feature is flagged while an unshifted
one is not, and labels sent to /feedback come back as the target column."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import yaml

from ml.data import read_window
from tests.ml.serving.conftest import REPO, config_dict


def test_logged_traffic_drives_the_drift_step(trained, start_server, tmp_path, make_records):
    log_dir = tmp_path / "log"
    server = start_server({"CT_MODEL_URI": str(trained.path), "CT_MODEL_SHA256": trained.sha256,
                           "CT_PREDICTION_LOG_DIR": str(log_dir)})
    shift = 3 * float(trained.reference["work_hours"].std())
    records = [r | {"work_hours": round(r["work_hours"] + shift, 2)} for r in make_records(400, seed=21)]
    client = server.client()
    ids = []
    for record in records[:50]:  # single-row traffic...
        response = client.post("/predict", json=record)
        assert response.status_code == 200
        ids.append(response.json()["prediction_id"])
    for start in range(50, 400, 50):  # ...and batches
        response = client.post("/predict/batch", json={"records": records[start:start + 50]})
        assert response.status_code == 200
    feedback = {"items": [{"prediction_id": pid, "label": i % 2} for i, pid in enumerate(ids[:20])]}
    assert client.post("/feedback", json=feedback).status_code == 202
    assert server.stop(signal.SIGTERM) == 0

    window = read_window(str(log_dir), label_column=trained.config.target)
    current = window.frame
    assert len(current) == 400
    assert set(current.columns) == {*trained.config.features.numeric, *trained.config.features.categorical,
                                    trained.config.target}
    assert int(current[trained.config.target].notna().sum()) == 20

    reference = tmp_path / "reference.csv"
    trained.reference.to_csv(reference, index=False)
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump(config_dict(str(reference))))
    env = {**os.environ, "CT_HOME": str(tmp_path / "ct"), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)

    def step(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ml", *args, "--config", str(config), "--current", str(log_dir)],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=300)

    validated = step("validate-data")  # the data contract holds for the served traffic too
    assert validated.returncode == 0, validated.stderr
    snapshot = json.loads(validated.stdout)["current_snapshot"]
    assert snapshot == "windows/current.parquet"
    # The log is live; validate froze the rows it checked into the run, and later steps read those:
    # even with the log gone, the drift step sees the same 400 rows.
    shutil.move(log_dir, tmp_path / "log-moved")
    # A step on another machine (pod, Databricks job) has no local copy: it fetches the run's artifact.
    local_copies = list((tmp_path / "ct" / "runs").rglob("current.parquet"))
    assert len(local_copies) == 1
    local_copies[0].unlink()
    out = step("drift", "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["features"]["work_hours"]["drifted"] is True, result["features"]["work_hours"]
    assert result["features"]["age"]["drifted"] is False, result["features"]["age"]
    assert result["features"]["department"]["drifted"] is False, result["features"]["department"]
    assert local_copies[0].is_file()  # fetched back from the MLflow run
    report = step("drift-report", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "work_hours" in json.loads(report.stdout)["evidently_drifted"]
    assert (tmp_path / "report" / "drift_report.html").is_file()

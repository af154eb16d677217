"""`python -m ml` as users call it: JSON on stdout, messages on stderr, meaningful exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import DATA, REPO


def ml(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "CT_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "ml", *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)


def test_bad_data_exits_1_naming_the_column(config_path, tmp_path):
    out = ml("validate-data", "--config", str(config_path), "--current", str(DATA / "bad_missing_column.csv"),
             home=tmp_path / "ct")
    assert out.returncode == 1
    assert "column 'salary' missing from current window" in out.stderr
    result = json.loads(out.stdout)
    assert result["passed"] is False and result["problems"]


def test_steps_chain_through_the_latest_run_and_write_out(config_path, tmp_path):
    home, out_dir = tmp_path / "ct", tmp_path / "out"
    first = ml("validate-data", "--config", str(config_path), "--current", str(DATA / "current_covariate_drift.csv"),
               home=home)
    assert first.returncode == 0, first.stderr
    key = json.loads(first.stdout)["run_key"]
    drift = ml("drift", "--config", str(config_path), "--current", str(DATA / "current_covariate_drift.csv"),
               "--out", str(out_dir), home=home)
    assert drift.returncode == 0, drift.stderr
    result = json.loads(drift.stdout)
    assert result["run_key"] == key and result["dataset_drift"] is True
    assert result["features"]["satisfaction_score"]["drifted"] is True
    assert (out_dir / "drift.json").exists() and not (out_dir / "drift_report.html").exists()
    assert not any(line.startswith("{") for line in drift.stderr.splitlines())  # logs stay off stdout
    report = ml("drift-report", "--config", str(config_path), "--out", str(out_dir), home=home)
    assert report.returncode == 0, report.stderr
    rendered = json.loads(report.stdout)
    assert rendered["run_key"] == key and "satisfaction_score" in rendered["evidently_drifted"]
    assert (rendered["reference_rows"], rendered["current_rows"]) == (5000, 2000)
    assert (out_dir / "drift-report.json").exists() and (out_dir / "drift_report.html").stat().st_size > 10_000


def test_usage_and_config_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntarget: y\npositive_class: 1\nfeatures: {numeric: [a]}\ndata: {reference: r.csv}\n"
                   "gates: {max_regresion: 0.1}\n")
    out = ml("validate-data", "--config", str(bad), home=tmp_path / "ct")
    assert out.returncode == 2 and "gates.max_regresion: unknown key" in out.stderr
    assert ml("frobnicate", home=tmp_path / "ct").returncode == 2
    missing = ml("gates", "--config", str(bad).replace("bad", "nope"), home=tmp_path / "ct")
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_a_run_that_needs_approval_stops_before_deploying_and_says_how_to_go_on(tmp_path):
    """promotion.approval: required outside Airflow: nobody can approve, so the version is registered, nothing
    is deployed, the champion does not move, and the record names the command that would release it."""
    from tests.conftest import write_config

    config = write_config(tmp_path / "c", promotion={"approval": "required"})
    out = ml("run", "--config", str(config), "--current", str(DATA / "current_unlabelled.csv"), home=tmp_path / "ct")
    assert out.returncode == 0, out.stderr  # waiting for a person is no failure
    record = json.loads(out.stdout)
    assert record["status"] == "not_approved" and record["challenger_version"] == "1"
    assert record["approval"]["decision"] == "pending" and "python -m ml deploy --version 1" in \
        record["approval"]["detail"]
    assert record["deployment"]["status"] is None and not record["promoted"] and record["champion_version"] is None


def test_a_run_refused_by_another_runs_lease_opens_no_mlflow_run(config_path, tmp_path):
    """Another run of the model is between two of its steps: a new run is refused before anything is made for
    it (no MLflow run left RUNNING under its key)."""
    home = tmp_path / "ct"
    first = ml("validate-data", "--config", str(config_path), "--run-key", "holder", home=home)
    assert first.returncode == 0, first.stderr
    refused = ml("validate-data", "--config", str(config_path), "--run-key", "intruder", home=home)
    assert refused.returncode == 1 and "in the middle of run 'holder'" in refused.stderr
    runs = subprocess.run([sys.executable, "-c", "import mlflow, json; print(json.dumps([r.data.tags.get("
                           "'ct.run_key') for r in mlflow.search_runs(search_all_experiments=True, "
                           "output_format='list')]))"],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db"})
    assert runs.returncode == 0, runs.stderr
    assert json.loads(runs.stdout.strip().splitlines()[-1]) == ["holder"]

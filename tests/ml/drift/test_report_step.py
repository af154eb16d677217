"""The drift_report step (ml.steps.check.drift_report): beside the decision path. It renders from the profiles the
drift step stored (no window read again, on this machine or another), takes no lock while it renders, and a
report that fails is an error in the run record, never the run's outcome."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from ml.config import load_config
from ml.drift.report import DriftReport
from ml.pipeline import run_step
from ml.state import Step
from ml.tracking import open_run
from tests.conftest import DATA, REPO, write_config


@pytest.fixture
def drifted(ct_home, tmp_path):
    """A run whose validate and drift steps ran on a copy of the drifted window (the copy can be taken away)."""
    current = tmp_path / "current.csv"
    shutil.copy(DATA / "current_covariate_drift.csv", current)
    config = load_config(write_config(tmp_path / "config", data={"current": str(current)}))
    ctx = open_run(config, "report-step")
    for step in (Step.VALIDATE, Step.DRIFT):
        run_step(step, ctx)
    return ctx, current


def test_the_report_renders_from_the_stored_profiles_without_reading_a_window(drifted):
    ctx, current = drifted
    current.unlink()  # the report must not need it
    shutil.rmtree(ctx.work_dir.parents[2] / "cache")  # nor this machine's cache: another worker renders it
    report = run_step(Step.DRIFT_REPORT, open_run(ctx.config, ctx.run_key)).result
    assert isinstance(report, DriftReport) and report.skipped is None
    assert (report.reference_rows, report.current_rows) == (5000, 2000)
    assert (report.reference_sample, report.current_sample) == (5000, 2000)  # drift.report_rows 5000
    assert {"satisfaction_score", "work_hours"} <= set(report.evidently_drifted)
    assert "ct-drift-banner" in open(report.report_path, encoding="utf-8").read()
    artifacts = [f.path for f in ctx.client.list_artifacts(ctx.mlflow_run_id, "reports")]
    assert artifacts == ["reports/drift_report.html"]


def test_the_report_takes_no_lock_while_another_step_holds_it(drifted, monkeypatch):
    ctx, _ = drifted
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ml.locks import model_lock\n"
         "with model_lock(sys.argv[1], run_key='other', what='a long step'):\n"
         "    print('held', flush=True)\n    time.sleep(120)\n", ctx.config.name],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("CT_LOCK_TIMEOUT_S", "1")
        started = time.monotonic()
        report = run_step(Step.DRIFT_REPORT, open_run(ctx.config, ctx.run_key)).result
        assert report.report_path is not None
        with pytest.raises(Exception, match="is busy"):  # a decision step does wait for the lock, and gives up
            run_step(Step.PERFORMANCE, open_run(ctx.config, ctx.run_key))
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait(10)


def test_without_drift_or_with_the_report_off_there_is_no_report(ct_home, tmp_path):
    config = load_config(write_config(tmp_path / "config", drift={"report_rows": 0}))
    ctx = open_run(config, "no-report")
    for step in (Step.VALIDATE, Step.DRIFT):
        run_step(step, ctx)
    report = run_step(Step.DRIFT_REPORT, open_run(config, ctx.run_key)).result
    assert report == DriftReport(None, skipped="drift.report_rows is 0")


def test_a_failed_report_is_an_error_of_the_record_not_the_runs_outcome(ct_home, tmp_path, monkeypatch):
    from ml.pipeline import run_pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("Evidently broke")

    monkeypatch.setattr("ml.drift.report.write_report", broken)
    config = load_config(write_config(tmp_path / "config"))  # the quiet window: a bootstrap run promotes
    record = run_pipeline(config, "broken-report")
    assert record.status == "promoted" and record.failure() is None
    assert record.errors == {"drift_report": "Evidently broke"}
    assert record.drift["report"] is None and record.drift["dataset_drift"] is not None

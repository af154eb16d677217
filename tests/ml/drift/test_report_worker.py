"""The drift report rendered by Evidently in a child process started beside the step (ml.drift.report_worker):
the same report as rendered in-process, and a child that fails never costs the step its report."""

from __future__ import annotations

import pytest

from ml.config import load_config
from ml.drift import detect_drift
from ml.drift.report_worker import ReportWorker, beside
from tests.conftest import DATA, DEMO_CONFIG
from tests.ml.drift.test_drift_contract import frames


@pytest.fixture(scope="module")
def config():
    return load_config(DEMO_CONFIG)


def _drift(config, tmp_path, worker):
    import pandas as pd

    reference, current = (pd.read_csv(DATA / name).head(400) for name in ("reference.csv",
                                                                          "current_covariate_drift.csv"))
    return detect_drift(config, reference, current, report_dir=tmp_path, report_worker=worker)


def test_the_worker_renders_the_report_the_step_would_render(config, tmp_path):
    here = _drift(config, tmp_path / "here", None)
    with beside(True) as kwargs:
        worker = kwargs["report_worker"]
        beside_ = _drift(config, tmp_path / "beside", worker)
    assert worker.process.returncode == 0  # it answered and ended
    for result in (here, beside_):
        text = open(result.report_path, encoding="utf-8").read()
        assert "ct-drift-banner" in text and len(text) > 10_000
    banner = [open(r.report_path, encoding="utf-8").read().split("ct-drift-banner")[1].split("</div>")[0]
              for r in (here, beside_)]
    assert banner[0] == banner[1]  # the same sample, the same Evidently verdicts in the banner
    assert not list((tmp_path / "beside").glob(".sample-*"))  # the hand-over files are gone


def test_a_worker_that_died_leaves_the_report_to_the_step(config, tmp_path, caplog):
    worker = ReportWorker()
    worker.process.kill()
    worker.process.wait(10)
    result = _drift(config, tmp_path, worker)
    assert "ct-drift-banner" in open(result.report_path, encoding="utf-8").read()
    assert "rendering the report here" in caplog.text


def test_a_job_the_worker_cannot_render_comes_back_as_an_error(tmp_path):
    reference, current = frames()
    worker = ReportWorker()
    job = {"numeric": ["a", "b"], "categorical": ["c"], "preset": {"columns": ["a", "b", "c", "no-such-column"]},
           "out": str(tmp_path / "r.html")}
    assert worker.render(job, reference, current) is None and worker.process.poll() is not None


def test_without_the_report_no_worker_is_started():
    with beside(False) as kwargs:
        assert kwargs == {}


def test_the_worker_is_started_only_where_it_pays_off():
    """This test process has imported MLflow (as every task of `airflow dags test` has): no worker; a fresh
    process has not."""
    import subprocess
    import sys

    import mlflow  # noqa: F401

    from ml.drift.report_worker import pays_off
    from tests.conftest import REPO

    assert pays_off() is False
    fresh = subprocess.run([sys.executable, "-c", "from ml.drift.report_worker import pays_off; print(pays_off())"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert fresh.stdout.strip() == "True", fresh.stderr

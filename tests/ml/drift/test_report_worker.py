"""The drift report rendered by Evidently in a child process started beside the step (ml.drift.report_worker):
the same report as rendered in-process, and a child that fails never costs the step its report."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ml.config import load_config
from ml.drift import detect_drift
from ml.drift.profile import ReferenceProfile
from ml.drift.report import render_report
from ml.drift.report_worker import ReportWorker, beside
from tests.conftest import DATA, DEMO_CONFIG, fresh_python
from tests.ml.drift.test_drift_contract import frames


@pytest.fixture(scope="module")
def config():
    return load_config(DEMO_CONFIG)


def _drift(config, tmp_path, worker):
    """The drift report step's work: the drift of two profiled windows, rendered from the profiles' samples."""
    import pandas as pd

    from ml.data import model_frame

    reference, current = (ReferenceProfile.build(model_frame(pd.read_csv(DATA / name).head(400), config), config,
                                                 sha256=name, seed=0)
                          for name in ("reference.csv", "current_covariate_drift.csv"))
    return render_report(config, detect_drift(config, reference, current), reference, current,
                         tmp_path / "drift_report.html", worker=worker)


def test_the_worker_renders_the_report_the_step_would_render(config, tmp_path):
    here = _drift(config, tmp_path / "here", None)
    worker = ReportWorker()
    beside_ = _drift(config, tmp_path / "beside", worker)
    assert worker.process.returncode == 0  # it answered and ended
    assert replace(here, report_path=None) == replace(beside_, report_path=None)  # the same Evidently flags
    assert "satisfaction_score" in here.evidently_drifted
    assert (here.reference_sample, here.reference_rows, here.current_sample) == (400, 400, 400)
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


def test_without_the_report_no_worker_is_started(config):
    with beside(None) as kwargs:  # not the drift step
        assert kwargs == {}
    with beside(config.model_copy(update={"drift": config.drift.model_copy(update={"report_rows": 0})})) as kwargs:
        assert kwargs == {}


_EARLY_SCRIPT = """
import sys
from ml.config import load_config
from ml.drift import report_worker
config = load_config(sys.argv[1])
report_worker.start_early(config)
early = report_worker._EARLY[config.name]
print(early.process.pid, flush=True)
if sys.argv[2] == "use":
    with report_worker.beside(config) as kwargs:
        assert kwargs["report_worker"] is early, kwargs
    assert early.process.poll() is not None  # ended with the step
    with report_worker.beside(config) as kwargs:  # taken once: the next report starts its own, if it pays
        assert kwargs.get("report_worker") is not early
"""


@pytest.mark.parametrize("use", ["use", "exit"])
def test_a_worker_started_early_is_the_report_steps_or_killed_at_exit(tmp_path, use):
    """`start_early` (python -m ml run, airflow dags test) leaves the worker for the drift report step of the same
    model; one that no report step took is gone once the process has exited."""
    import psutil

    done = fresh_python(_EARLY_SCRIPT, str(DEMO_CONFIG), use, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pid = int(done.stdout.split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_worker_is_started_only_where_it_pays_off():
    """This test process has imported MLflow (as every task of `airflow dags test` has): no worker; a fresh
    process has not."""
    import mlflow  # noqa: F401

    from ml.drift.report_worker import pays_off

    assert pays_off() is False
    fresh = fresh_python("from ml.drift.report_worker import pays_off; print(pays_off())")
    assert fresh.stdout.strip() == "True", fresh.stderr

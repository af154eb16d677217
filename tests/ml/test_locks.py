"""One lock per model (ml.locks): a second holder waits a bounded time and is refused naming the run that
holds it; the run lease keeps another run out between two steps of a run; a dead owner frees both."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ml.locks import ModelBusy, lease_holder, model_lock, release_lease, take_lease
from tests.conftest import REPO

HOLD = """
import sys, time
from ml.locks import model_lock, take_lease
with model_lock("m", run_key="cli-holder", what="python -m ml run"):
    take_lease("m", "cli-holder", process=True)
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(ct_home):
    proc = subprocess.Popen([sys.executable, "-c", HOLD], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait(5)


def test_second_holder_waits_then_is_refused_naming_the_run(holder):
    started = time.monotonic()
    with pytest.raises(ModelBusy) as caught, model_lock("m", run_key="cli-second", what="python -m ml run",
                                                        timeout_s=1.0):
        pass
    assert 1.0 <= time.monotonic() - started < 5
    assert "'cli-holder'" in str(caught.value) and f"pid {holder.pid}" in str(caught.value)
    assert "'cli-second'" in str(caught.value)


def test_a_killed_holder_frees_lock_and_lease(holder):
    holder.kill()
    holder.wait(5)
    with model_lock("m", run_key="cli-next", what="python -m ml run", timeout_s=5):
        assert lease_holder("m") is None  # its owner process is gone
        take_lease("m", "cli-next", process=True)
        assert lease_holder("m")["run_key"] == "cli-next"


def test_the_lease_keeps_another_run_out_between_steps(ct_home):
    """An Airflow run's steps are separate processes: between them the file lock is free, the lease is not."""
    with model_lock("m", run_key="airflow-1", what="step validate"):
        take_lease("m", "airflow-1")
    with model_lock("m", run_key="cli-2", what="step validate"), pytest.raises(ModelBusy) as caught:
        take_lease("m", "cli-2")
    assert "'airflow-1'" in str(caught.value) and "python -m ml record" in str(caught.value)
    take_lease("m", "airflow-1")  # the run itself goes on
    release_lease("m", "airflow-1")
    take_lease("m", "cli-2")
    assert lease_holder("m")["run_key"] == "cli-2"


def test_the_lock_is_reentrant_in_one_process(ct_home):
    with model_lock("m", run_key="r", what="run"), model_lock("m", run_key="r", what="deploy", timeout_s=0.1):
        pass

"""A CLI step's start-up without the garbage collector's full passes (ml.startup): collection is off while the
process imports MLflow and opens its run, and on again, with everything imported so far frozen, by the time the
step's own work runs; an operator's task gets the same, and never leaves collection off."""

from __future__ import annotations

import gc
import json

import pytest

from tests.conftest import fresh_python

_SPY = """
import gc, json, sys
from ml import cli, pipeline
from ml.state import Step

seen = {"at_start": gc.isenabled()}
original = pipeline.STEP_FUNCTIONS[Step.VALIDATE]

def spy(run, **kwargs):
    seen.update(in_step=gc.isenabled(), frozen=gc.get_freeze_count(), mlflow="mlflow" in sys.modules)
    return original(run, **kwargs)

pipeline.STEP_FUNCTIONS[Step.VALIDATE] = spy
code = cli.main(["validate-data", "--config", sys.argv[1]])
sys.stderr.write("SEEN " + json.dumps({**seen, "code": code}) + "\\n")
"""


def test_a_cli_step_imports_without_collection_and_works_with_it(ct_home, config_path):
    done = fresh_python(_SPY, str(config_path), timeout=120)
    seen = json.loads(next(line[5:] for line in done.stderr.splitlines() if line.startswith("SEEN ")))
    assert seen["code"] == 0 and seen["at_start"] is True
    # the step runs with collection on, MLflow imported and frozen into the permanent generation
    assert seen["in_step"] is True and seen["mlflow"] is True and seen["frozen"] > 100_000


def test_end_without_begin_changes_nothing():
    from ml import startup

    frozen = gc.get_freeze_count()
    startup.end()
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_an_operator_that_cannot_open_its_run_leaves_collection_on(monkeypatch, config_path):
    from ct_airflow.operators import ValidateDataOperator

    def unreachable(*args, **kwargs):
        raise ConnectionError("tracking server down")

    monkeypatch.setattr("ml.tracking.open_run", unreachable)
    operator = ValidateDataOperator(task_id="validate_data", config_path=str(config_path))
    with pytest.raises(ConnectionError):
        operator.run_context()
    assert gc.isenabled()


def test_only_the_first_start_up_of_a_process_pauses_and_freezes():
    """A process that runs task after task freezes once: what later tasks leave is collected as usual."""
    script = ("import gc\nfrom ml import startup\n"
              "startup.begin(); paused = not gc.isenabled(); startup.end(); frozen = gc.get_freeze_count()\n"
              "startup.begin(); again = not gc.isenabled(); startup.end()\n"
              "print(paused, again, gc.isenabled(), gc.get_freeze_count() == frozen > 0)")
    done = fresh_python(script)
    assert done.stdout.split() == ["True", "False", "True", "True"], done.stderr


def test_a_command_that_fails_before_mlflow_leaves_collection_on(tmp_path):
    """`main` called in-process (the Databricks wheel's entry point) with a bad config: an error, collection on."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    script = ("import gc, sys\nfrom ml.cli import main\n"
              "code = main(['validate-data', '--config', sys.argv[1]])\nprint(code, gc.isenabled())")
    done = fresh_python(script, str(bad))
    assert done.stdout.split() == ["2", "True"], done.stderr

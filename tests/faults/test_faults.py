"""The fault suite (benchmarks/faults.py) as tests: a real MLflow server, real `python -m ml run` processes
and real model servers, each fault followed by the next run and the consistency check. One workspace for
the module (bootstrapped once); the faults run in order on it, as they would on one machine."""

from __future__ import annotations

import pytest

from benchmarks.faults import ERROR_BOUND_S, Outcome, Workspace, bootstrap, check

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, module_ct_home):
    ws = Workspace(tmp_path_factory.mktemp("faults"))
    try:
        bootstrap(ws)
        assert check(ws) == []
        yield ws
    finally:
        ws.stop_servers()
        ws.kill_mlflow()


def _consistent(outcome: Outcome, *, names: tuple[str, ...]) -> None:
    assert outcome.problems == [], outcome
    assert outcome.orphans == 0
    assert outcome.seconds_to_error is not None and outcome.seconds_to_error < ERROR_BOUND_S, outcome
    assert all(name in outcome.error for name in names), outcome.error


def test_mlflow_server_killed_during_a_step(workspace):
    from benchmarks.faults import mlflow_killed

    outcome = mlflow_killed(workspace)
    _consistent(outcome, names=("step ", workspace.tracking_uri, "did not answer"))
    assert outcome.detail["exit_code"] == 1


def test_run_sigkilled_during_train(workspace):
    from benchmarks.faults import run_killed_train

    outcome = run_killed_train(workspace)
    _consistent(outcome, names=("step train was killed",))
    assert outcome.detail["killed_status"] == "failed"


def test_run_sigkilled_during_deploy(workspace):
    from benchmarks.faults import run_killed_deploy

    outcome = run_killed_deploy(workspace)
    _consistent(outcome, names=("step deploy was killed",))


def test_two_runs_of_one_model_at_once(workspace):
    from benchmarks.faults import two_runs

    outcome = two_runs(workspace)
    _consistent(outcome, names=("is busy: run 'cli-", "holds its lock"))
    assert outcome.detail["first"] == "promoted" and outcome.detail["second_exit"] == 1


def test_serving_supervisor_killed(workspace):
    from benchmarks.faults import supervisor_killed

    outcome = supervisor_killed(workspace)
    _consistent(outcome, names=("which is gone",))
    assert outcome.detail["workers_left"] == 0 and outcome.detail["workers"] >= 2

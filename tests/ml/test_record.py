"""The run record is a pure function of the run state: its status rules, in order, and its sections."""

from __future__ import annotations

import dataclasses

import pytest

from ml.decision import Decision
from ml.deploy import DeployResult
from ml.gates import GateReport, GateResult
from ml.record import build_record, run_status
from ml.registry import Approval
from ml.state import RunState, Step, StepError, StepRecord, Validation
from tests.ml.test_state import EXAMPLES

PASSED = EXAMPLES[Step.VALIDATE]
BLOCKED = Validation(started_at="t", passed=False, problems=["column 'salary' missing from current window"])
PASSING = GateReport({"min_roc_auc": GateResult(True, 0.81, 0.7, "ok")}, champion_version="1")
REJECTED = GateReport({"challenger_vs_champion": GateResult(False, -0.1, -0.02, "worse")}, champion_version="1")
ROLLED_BACK = DeployResult("local", "2", "1", "rolled_back", True, "http://127.0.0.1:1", "smoke test failed")
FAILED_DEPLOY = dataclasses.replace(ROLLED_BACK, status="failed", rolled_back=False, url=None)
REJECTED_BY = Approval(version="2", decision="rejected", by="alice", at="2026-01-02T09:00:00+00:00")


def state(*results: tuple[Step, object], errors: dict[Step, str] | None = None) -> RunState:
    run = RunState("run-1")
    for step, result in results:
        run = run.with_record(StepRecord(step, "a", result=result, opens_attempt=step is Step.VALIDATE))
    for step, message in (errors or {}).items():
        run = run.with_record(StepRecord(step, "a", error=StepError("StepFailed", message, True),
                                         opens_attempt=step is Step.VALIDATE))
    return run


def through(last: Step, **replaced: object) -> list[tuple[Step, object]]:
    """The results of a run that got as far as `last`, some replaced."""
    steps = list(Step)[: list(Step).index(last) + 1]
    defaults = {**EXAMPLES, Step.GATES: PASSING}
    return [(s, replaced.get(s.value, defaults[s])) for s in steps]


@pytest.mark.parametrize(("results", "errors", "status"), [
    ([(Step.VALIDATE, BLOCKED)], None, "blocked"),
    ([], {Step.VALIDATE: "MLflow unreachable"}, "failed"),
    (through(Step.DECIDE, decide=Decision("skip", "no drift")), {Step.PERFORMANCE: "boom"}, "failed"),
    (through(Step.DECIDE, decide=Decision("skip", "no drift")), None, "skipped"),
    (through(Step.GATES, gates=REJECTED), None, "rejected"),
    (through(Step.DEPLOY, deploy=ROLLED_BACK), None, "rolled_back"),
    (through(Step.DEPLOY, deploy=FAILED_DEPLOY), None, "failed"),
    (through(Step.PROMOTE), None, "promoted"),
    (through(Step.REGISTER), None, "failed"),  # retrain decided, nothing promoted: not a success
    # promotion.approval: required: a person said no, nobody answered in time, or nobody could answer
    (through(Step.APPROVE, approve=REJECTED_BY), None, "not_approved"),
    (through(Step.APPROVE, approve=dataclasses.replace(REJECTED_BY, decision="timed_out", by=None)), None,
     "not_approved"),
    (through(Step.APPROVE, approve=Approval(version="2", decision="pending")), None, "not_approved"),
    (through(Step.APPROVE), None, "failed"),  # approved, then nothing deployed: not a success
])
def test_status_rules(results, errors, status):
    assert run_status(state(*results, errors=errors)) == status


def test_operator_actions_are_runs_of_their_own():
    rollback = Decision("rollback", "rollback of v2: bad", ["manual"])
    opened = RunState("op").with_record(StepRecord(Step.DECIDE, "o", result=rollback, opens_attempt=True))
    deployed = opened.with_record(StepRecord(Step.DEPLOY, "o", result=EXAMPLES[Step.DEPLOY]))
    assert run_status(deployed.with_record(StepRecord(Step.PROMOTE, "o", result=EXAMPLES[Step.PROMOTE]))) == \
        "promoted"
    assert run_status(opened.with_record(StepRecord(Step.DEPLOY, "o", result=ROLLED_BACK))) == "rolled_back"
    manual = RunState("op").with_record(StepRecord(Step.DECIDE, "o", result=Decision("deploy", "manual deploy of v2"),
                                                   opens_attempt=True))
    record = build_record(manual.with_record(StepRecord(Step.DEPLOY, "o", result=EXAMPLES[Step.DEPLOY])),
                          model="m", run_id="r")
    assert record.status == "deployed" and record.failure() is None and record.decision == "deploy"


def test_a_blocked_record_names_the_problem_and_fails():
    record = build_record(state((Step.VALIDATE, BLOCKED)), model="m", run_id="r")
    assert record.decision == "blocked" and "column 'salary' missing" in record.reason
    assert record.contract["passed"] is False and record.contract["problems"] == BLOCKED.problems
    assert record.failure().startswith("run blocked: data contract failed")
    assert record.challenger_version is None and record.training is None and record.gates == {}


def test_a_promoted_record_carries_every_section():
    record = build_record(state(*through(Step.PROMOTE)), model="m", run_id="r", finished_at="2026-01-01T01:00:00")
    doc = record.to_dict()
    assert doc["status"] == "promoted" and record.failure() is None
    assert doc["data"]["current_sha256"] == "b" * 64 and doc["data"]["rows"]["reference"] == 10
    assert {k: doc["drift"]["features"]["x"][k] for k in ("method", "score", "threshold", "drifted")} == \
        {"method": "ks", "score": 0.01, "threshold": 0.05, "drifted": True}
    assert doc["performance"]["decayed"] is True and doc["triggers"] == ["data_drift"]
    assert doc["training"]["estimator"] == "logistic_regression" and doc["failed_gates"] == []
    assert doc["challenger_version"] == "2" and doc["champion_version"] == "2" and doc["promoted"] is True
    assert doc["deployment"] == {"target": "local", "version": "2", "status": "deployed", "rolled_back": False,
                                 "url": "http://127.0.0.1:1", "detail": "ok"}
    assert set(doc) == {"model", "run_id", "run_key", "dag_id", "dag_run_id", "started_at", "finished_at", "status",
                        "data", "contract", "drift", "performance", "decision", "reason", "triggers", "rule",
                        "decision_inputs", "training",
                        "gates", "failed_gates", "challenger_version", "promoted", "champion_version", "deployment",
                        "errors", "champion_kept", "notify", "timings", "approval"}
    assert doc["approval"] == {"version": "2", "decision": "approved", "by": "admin",
                               "at": "2026-01-01T00:00:00+00:00", "detail": "approved by admin"}


def test_a_rejected_approval_is_recorded_with_who_and_when_and_is_no_failure():
    from ml.explain import run_note

    record = build_record(state(*through(Step.APPROVE, approve=REJECTED_BY)), model="m", run_id="r")
    assert record.status == "not_approved" and record.failure() is None and not record.promoted
    assert record.approval["by"] == "alice" and record.approval["at"] == "2026-01-02T09:00:00+00:00"
    assert record.champion_version == "1"  # the champion the attempt compared with stays
    note = run_note(record)
    assert note.startswith("**not_approved** · decision **retrain**: drift")
    assert "approval rejected by alice at 2026-01-02T09:00:00+00:00" in note and "champion stays v1" in note


def test_a_skipped_drift_reads_as_not_measured():
    from ml.drift import DriftResult

    skipped = DriftResult.not_run("no current window configured", 0.5)
    record = build_record(state(*through(Step.DECIDE, drift=skipped, decide=Decision("skip", "nothing"))),
                          model="m", run_id="r")
    assert record.drift["dataset_drift"] is None and record.drift["skipped"] == "no current window configured"


def test_outcomes_green_red_and_what_notifies():
    healthy = dataclasses.replace(REJECTED, champion_decayed=False)
    kept = build_record(state(*through(Step.GATES, gates=healthy)), model="m", run_id="r")
    assert kept.status == "rejected" and kept.champion_kept and kept.failure() is None and kept.notify is None
    decayed = build_record(state(*through(Step.GATES, gates=dataclasses.replace(REJECTED, champion_decayed=True))),
                           model="m", run_id="r")
    assert not decayed.champion_kept and "has decayed: no acceptable challenger" in decayed.failure()
    assert decayed.notify == decayed.failure()
    no_champion = dataclasses.replace(EXAMPLES[Step.PERFORMANCE], champion_version=None)
    bootstrap = build_record(state(*through(Step.GATES, gates=dataclasses.replace(REJECTED, champion_version=None),
                                            performance=no_champion)), model="m", run_id="r")
    assert "there is no champion" in bootstrap.failure()
    waiting = Decision("skip", "decay estimated without labels: ...; waiting for labels", rule="estimated_decay")
    green = build_record(state(*through(Step.DECIDE, decide=waiting)), model="m", run_id="r")
    assert green.status == "skipped" and green.failure() is None and "waiting for labels" in green.notify
    rolled = build_record(state(*through(Step.DEPLOY, deploy=ROLLED_BACK)), model="m", run_id="r")
    assert rolled.failure().startswith("deploy failed and was rolled back") and rolled.notify == rolled.failure()
    assert build_record(state(*through(Step.PROMOTE)), model="m", run_id="r").notify is None

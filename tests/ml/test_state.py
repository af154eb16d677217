"""The run-state contract (ml.state): step records round-trip through JSON, failures map back to the right
error, a retried attempt never sees an earlier attempt's results, and a step reads each record once."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ml.decision import Decision, PerformanceResult
from ml.deploy import DeployResult
from ml.drift import DriftResult, FeatureDrift
from ml.drift.report import DriftReport
from ml.errors import ContractError, DeployError, GatesFailed, RegistryError, StateError, StepFailed
from ml.estimate import Calibration
from ml.gates import GateReport, GateResult
from ml.registry import AliasMove, Approval, Promotion, Registration
from ml.state import RESULT_TYPES, RunState, Step, StepError, StepRecord, Validation, step_error
from ml.train import TrainResult

MOVE = AliasMove(alias="champion", version="2", previous="1", by="cli:me", reason="r", at="2026-01-01T00:00:00+00:00",
                 kind="promote")
EXAMPLES = {
    Step.VALIDATE: Validation(started_at="2026-01-01T00:00:00+00:00", passed=True, problems=[], warnings=["w"],
                              rows={"reference": 10, "current": 5, "current_labelled": None}, dag_id="d",
                              reference_sha256="a" * 64, current_sha256="b" * 64, champion_version="1"),
    Step.DRIFT: DriftResult(dataset_drift=True, drifted_share=0.5, drift_share_threshold=0.5,
                            features={"x": FeatureDrift("ks", 0.01, 0.05, True), "y": FeatureDrift("psi", 0.0, 0.2,
                                                                                                  False)},
                            compared_with="data.reference", reference_sha256="a" * 64),
    Step.DRIFT_REPORT: DriftReport("/r.html", reference_sample=10, reference_rows=10, current_sample=5, current_rows=5,
                                   evidently_drifted=["x"]),
    Step.PERFORMANCE: PerformanceResult("1", "roc_auc", 0.8, 0.7, True, 120, 0.05, "dropped"),
    Step.DECIDE: Decision("retrain", "drift", ["data_drift"], force_retrain=False),
    Step.TRAIN: TrainResult(model_id="m-1", model_uri="models:/m-1", onnx_sha256="c" * 64, onnx_size_bytes=10,
                            estimator="logistic_regression", train_rows=90, eval_rows=30, eval_source="current",
                            metrics={"roc_auc": 0.81}, classes=["0", "1"], window="all", candidates={"all": 0.81},
                            calibration=Calibration(x=[0.1, 0.9], y=[0.05, 0.95])),
    Step.GATES: GateReport({"min_roc_auc": GateResult(True, 0.81, 0.7, "ok"),
                            "size": GateResult(False, 60.0, 50.0, "too big")}, champion_version="1"),
    Step.REGISTER: Registration(version="2", created=True, challenger_alias=MOVE),
    Step.APPROVE: Approval(version="2", decision="approved", by="admin", at="2026-01-01T00:00:00+00:00",
                           detail="approved by admin"),
    Step.DEPLOY: DeployResult("local", "2", "1", "deployed", False, "http://127.0.0.1:1", "ok",
                              {"passed": True, "detail": "ok", "checks": ["health"], "latency_ms": 1.0}),
    Step.PROMOTE: Promotion(version="2", previous="1", promoted=True, move=MOVE, sha256="c" * 64),
}


def test_every_step_has_an_example_of_its_result_type():
    assert set(EXAMPLES) == set(Step) == set(RESULT_TYPES)
    for step, result in EXAMPLES.items():
        assert type(result) is RESULT_TYPES[step]


@pytest.mark.parametrize("step", list(Step))
def test_step_records_round_trip_through_json(step):
    record = StepRecord(step, "attempt-1", result=EXAMPLES[step], opens_attempt=step is Step.VALIDATE)
    again = StepRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record
    assert again.to_dict()["status"] == "completed"
    failed = StepRecord(step, "attempt-1", error=StepError("DataError", "bad file", False))
    assert StepRecord.from_dict(json.loads(json.dumps(failed.to_dict()))) == failed


def test_summaries_name_the_fields_worth_showing():
    assert EXAMPLES[Step.GATES].summary() == {"passed": False, "failed": ["size"], "champion_version": "1"}
    assert EXAMPLES[Step.REGISTER].summary() == {"version": "2", "created": True}
    assert set(EXAMPLES[Step.DEPLOY].summary()) == {"target", "version", "previous_version", "status",
                                                    "rolled_back", "url", "detail"}
    for step, result in EXAMPLES.items():
        assert result.summary(), f"{step} shows nothing in XCom"
        assert set(result.summary()) <= set(result.to_dict())


def test_a_failed_record_becomes_the_error_it_stored():
    def rebuilt(error: StepError) -> Exception:
        return step_error(StepRecord(Step.TRAIN, "a", error=error))

    contract = rebuilt(StepError.of(ContractError("column 'x' missing")))
    assert isinstance(contract, ContractError) and not contract.retryable and str(contract) == "column 'x' missing"
    assert rebuilt(StepError.of(RegistryError("busy"))).retryable  # a registry race: retry
    unexpected = rebuilt(StepError.of(ConnectionError("refused")))
    assert isinstance(unexpected, StepFailed) and unexpected.retryable and "ConnectionError: refused" in str(unexpected)


def test_results_that_stop_the_run_become_errors_and_the_others_none():
    rejected = step_error(StepRecord(Step.GATES, "a", result=EXAMPLES[Step.GATES]))
    assert isinstance(rejected, GatesFailed) and "size: too big" in str(rejected)
    blocked = Validation(started_at="t", passed=False, problems=["column 'x' missing"])
    error = step_error(StepRecord(Step.VALIDATE, "a", result=blocked))
    assert isinstance(error, ContractError) and error.problems == ["column 'x' missing"]
    rolled_back = DeployResult("local", "2", "1", "rolled_back", True, None, "smoke test failed")
    assert isinstance(step_error(StepRecord(Step.DEPLOY, "a", result=rolled_back)), DeployError)
    for step in (Step.VALIDATE, Step.DRIFT, Step.DECIDE, Step.DEPLOY, Step.PROMOTE):
        assert step_error(StepRecord(step, "a", result=EXAMPLES[step])) is None


def state_of(*records: StepRecord) -> RunState:
    return RunState.from_documents("run-1", {str(r.step): r.to_dict() for r in records})


def test_a_retried_attempt_never_sees_the_previous_attempts_results():
    old_drift = StepRecord(Step.DRIFT, "old", result=EXAMPLES[Step.DRIFT])
    old_train = StepRecord(Step.TRAIN, "old", result=EXAMPLES[Step.TRAIN])
    state = state_of(StepRecord(Step.VALIDATE, "new", result=EXAMPLES[Step.VALIDATE], opens_attempt=True),
                     old_drift, old_train)
    assert state.attempt == "new"
    assert state.record(Step.DRIFT) is None and state.get(Step.DRIFT, DriftResult) is None
    with pytest.raises(StateError, match="step 'train' has not run in the current attempt"):
        state.require(Step.TRAIN, TrainResult)
    assert state.last_record(Step.TRAIN) == old_train  # only for idempotent re-runs, asked for by name
    assert state.champion_version == "1"  # pinned by this attempt's validate


def test_a_new_attempt_in_the_same_process_hides_the_old_one():
    first = RunState("run-1").with_record(
        StepRecord(Step.VALIDATE, "a1", result=EXAMPLES[Step.VALIDATE], opens_attempt=True))
    first = first.with_record(StepRecord(Step.DRIFT, "a1", result=EXAMPLES[Step.DRIFT]))
    assert first.get(Step.DRIFT, DriftResult) == EXAMPLES[Step.DRIFT]
    second = first.with_record(StepRecord(Step.VALIDATE, "a2", result=EXAMPLES[Step.VALIDATE], opens_attempt=True))
    assert second.attempt == "a2" and second.get(Step.DRIFT, DriftResult) is None


def test_a_failed_step_is_named_by_what_builds_on_it():
    state = state_of(StepRecord(Step.VALIDATE, "a", result=EXAMPLES[Step.VALIDATE], opens_attempt=True),
                     StepRecord(Step.TRAIN, "a", error=StepError("TrainingError", "single class", False)))
    with pytest.raises(StateError, match="step 'train' failed, so nothing builds on it: single class"):
        state.require(Step.TRAIN, TrainResult)
    with pytest.raises(StateError, match="start the run with `validate-data`"):
        RunState("run-2").require(Step.VALIDATE, Validation)


# ---- with a real MLflow store ------------------------------------------------------------------------

def test_a_revalidated_run_decides_without_the_earlier_drift(ct_home, config_path):
    from ml.config import load_config
    from ml.pipeline import run_step
    from ml.tracking import open_run
    from tests.conftest import DATA

    config = load_config(config_path).with_data(current=str(DATA / "current_covariate_drift.csv"))
    ctx = open_run(config, "retried")
    run_step(Step.VALIDATE, ctx)
    assert run_step(Step.DRIFT, ctx).result.dataset_drift is True
    run_step(Step.VALIDATE, ctx)  # a retry of the run: a new attempt
    state = RunState.load(ctx)
    assert state.get(Step.DRIFT, DriftResult) is None and state.last_record(Step.DRIFT) is not None
    decision = run_step(Step.DECIDE, ctx).result
    assert decision.decision == "retrain" and decision.triggers == ["bootstrap"]
    with pytest.raises(StateError, match="'train' has not run in the current attempt"):
        run_step(Step.GATES, ctx)


@pytest.mark.e2e
def test_each_step_reads_each_earlier_record_at_most_once(ct_home, config_path, monkeypatch):
    """Every step invoked as Airflow does (a fresh process state per task) downloads the run's step
    records once: one download per stored record, never the same record twice."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    from ml.config import load_config
    from ml.pipeline import run_step
    from ml.state import CHECK_STEPS, RETRAIN_STEPS
    from ml.tracking import open_run

    downloads: list[str] = []
    original = LocalArtifactRepository._download_file

    def counting(self, remote_file_path, local_path):
        downloads.append(remote_file_path)
        return original(self, remote_file_path, local_path)

    monkeypatch.setattr(LocalArtifactRepository, "_download_file", counting)
    ctx = open_run(load_config(config_path), "counted")
    kwargs = {Step.DECIDE: {"force_retrain": True}}
    for step in (*CHECK_STEPS[:2], Step.DRIFT_REPORT, *CHECK_STEPS[2:], *RETRAIN_STEPS):
        stored = {info.path for info in ctx.client.list_artifacts(ctx.mlflow_run_id, "steps")}
        downloads.clear()
        run_step(step, open_run(ctx.config, ctx.run_key), **kwargs.get(step, {}))
        records = Counter(path for path in downloads if path.startswith("steps/"))
        assert all(n == 1 for n in records.values()), (step, records)
        # validate opens a new attempt and reads nothing; every other step reads what is stored, once
        assert set(records) == (set() if step is Step.VALIDATE else stored), (step, sorted(records))
    assert len(stored) == len(Step) - 2  # every step before promote (but approve: not required) had stored its record

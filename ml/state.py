"""The run state: what the steps of one pipeline run hand to each other, in one typed contract.

    Step           the steps, in pipeline order (an enum: steps never refer to each other by strings)
    StepRecord     what a step stores when it ends: step, attempt, and its typed result or its error
    RunState       every record of the run, read once per step invocation; the current attempt's view
    step_error()   the error a stored record stands for (a failed step, or a result that stops the run)

Each record is stored as the artifact `steps/<step>.json` of the run's MLflow run (ml.tracking reads
and writes them), which is how a step that ran in a Kubernetes pod or a Databricks job hands its
result to the next task without a shared disk.

Attempts: `validate` opens an attempt (a fresh id) every time it runs, and every later step stamps
that id on its record. A re-run of the same Airflow run (cleared tasks, retries) therefore never
builds on what an earlier attempt left behind: `RunState` shows only the current attempt's records.
The attempt also pins what every step must agree on: the windows' sha256 and the champion version
`validate` saw, so a champion promoted by another run half-way does not change what this run compares.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from ml.contract import Quarantine
from ml.decision import Decision, PerformanceResult
from ml.deploy import DeployResult
from ml.drift import DriftResult
from ml.drift.report import DriftReport
from ml.errors import ContractError, CTError, StateError, rebuild_error
from ml.gates import GateReport
from ml.registry import Approval, Promotion, Registration
from ml.result import Result
from ml.train import TrainResult

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ml.tracking import RunContext

R = TypeVar("R", bound=Result)


class Step(StrEnum):
    """The pipeline's steps in order; the value names the CLI step and the stored record."""

    VALIDATE = "validate"
    DRIFT = "drift"
    DRIFT_REPORT = "drift_report"
    PERFORMANCE = "performance"
    DECIDE = "decide"
    TRAIN = "train"
    GATES = "gates"
    REGISTER = "register"
    APPROVE = "approve"
    DEPLOY = "deploy"
    PROMOTE = "promote"


CHECK_STEPS = (Step.VALIDATE, Step.DRIFT, Step.PERFORMANCE, Step.DECIDE)
#: Steps beside the decision path: they read the run state and write only their own record and files, so they take
#: neither the model's lock nor the run's step mark, run while the decision's steps do, and their failure is
#: reported (the record's `errors`) without failing the run.
SIDE_STEPS = frozenset({Step.DRIFT_REPORT})
#: APPROVE runs between REGISTER and DEPLOY only with `promotion.approval: required` (ml.pipeline).
RETRAIN_STEPS = (Step.TRAIN, Step.GATES, Step.REGISTER, Step.DEPLOY, Step.PROMOTE)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_attempt() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Validation(Result):
    """The validate step's result: the windows (paths, sha256, rows), the data contract's verdict, and
    what the attempt pins for every later step (the current-window snapshot, the champion version)."""

    summary_fields = ("passed", "problems", "warnings", "rows", "reference_sha256", "current_sha256",
                      "champion_version")

    started_at: str
    passed: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: dict[str, int | None] = field(default_factory=dict)
    dag_id: str | None = None
    dag_run_id: str | None = None
    reference_path: str | None = None
    current_path: str | None = None
    reference_sha256: str | None = None
    current_sha256: str | None = None
    #: artifact path of the current window frozen into the run (a live prediction log), if any
    current_snapshot: str | None = None
    #: the champion when the attempt started: every later step compares with this version
    champion_version: str | None = None
    #: window ("reference", "current") -> the rows dropped because they break the contract (ml.contract)
    quarantine: dict[str, Quarantine] = field(default_factory=dict)

    @property
    def dropped_rows(self) -> dict[str, int]:
        """window -> rows dropped because they break the contract (shown in the summary)."""
        return {name: q.dropped for name, q in self.quarantine.items()}

    def summary(self) -> dict[str, Any]:
        return super().summary() | {"quarantine": {name: q.summary() for name, q in self.quarantine.items()}}

    def stop_error(self) -> ContractError | None:
        if self.passed:
            return None
        return ContractError("data contract failed: " + "; ".join(self.problems), list(self.problems))


RESULT_TYPES: dict[Step, type[Result]] = {
    Step.VALIDATE: Validation, Step.DRIFT: DriftResult, Step.DRIFT_REPORT: DriftReport,
    Step.PERFORMANCE: PerformanceResult,
    Step.DECIDE: Decision, Step.TRAIN: TrainResult, Step.GATES: GateReport, Step.REGISTER: Registration,
    Step.APPROVE: Approval, Step.DEPLOY: DeployResult, Step.PROMOTE: Promotion,
}


@dataclass(frozen=True)
class StepError(Result):
    """Why a step raised: the error's class name, its message, and whether a retry can help."""

    type: str
    message: str
    retryable: bool

    @classmethod
    def of(cls, exc: BaseException) -> StepError:
        retryable = exc.retryable if isinstance(exc, CTError) else True
        return cls(type=type(exc).__name__, message=str(exc), retryable=retryable)


@dataclass(frozen=True)
class StepRecord:
    """What one step stored: its typed result when it completed, its error when it raised."""

    step: Step
    attempt: str | None
    result: Result | None = None
    error: StepError | None = None
    finished_at: str = field(default_factory=now)
    #: True for the record that opened `attempt` (validate; a deploy run outside the pipeline)
    opens_attempt: bool = False
    #: wall time of the step function, seconds
    seconds: float | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step.value, "attempt": self.attempt, "status": "failed" if self.failed else "completed",
                "opens_attempt": self.opens_attempt, "finished_at": self.finished_at, "seconds": self.seconds,
                "result": self.result.to_dict() if self.result is not None else None,
                "error": self.error.to_dict() if self.error is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepRecord:
        step = Step(data["step"])
        result = data.get("result")
        error = data.get("error")
        return cls(step=step, attempt=data.get("attempt"), finished_at=data.get("finished_at") or "",
                   opens_attempt=bool(data.get("opens_attempt")), seconds=data.get("seconds"),
                   result=RESULT_TYPES[step].from_dict(result) if result is not None else None,
                   error=StepError.from_dict(error) if error is not None else None)


def step_error(record: StepRecord) -> CTError | None:
    """The error a stored record stands for, or None when the run may go on: the step's own error (the
    project's error class of that name, so a step that failed in a pod fails the task as it would in the
    worker), or the outcome that stops the run (contract failed, a gate failed, the deploy rolled back).
    The pipeline, the CLI and the remote operators all ask this."""
    if record.error is not None:
        return rebuild_error(record.error.type, record.error.message, record.error.retryable)
    return record.result.stop_error() if record.result is not None else None


@dataclass(frozen=True)
class RunState:
    """Every stored record of a run (the newest per step), read once; the current attempt's view."""

    run_key: str
    stored: Mapping[Step, StepRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, ctx: RunContext) -> RunState:
        """The run's state from every step record stored in its MLflow run, read once."""
        return cls.from_documents(ctx.run_key, ctx.load_step_documents())

    @classmethod
    def from_documents(cls, run_key: str, documents: Mapping[str, Mapping[str, Any]]) -> RunState:
        """From the stored JSON documents, by step name (unknown files are ignored)."""
        names = {step.value for step in Step}
        records = [StepRecord.from_dict(doc) for name, doc in documents.items() if name in names]
        return cls(run_key=run_key, stored={r.step: r for r in records})

    @property
    def attempt(self) -> str | None:
        """The current attempt: opened by the first step (in order) whose record opened one."""
        for step in Step:
            record = self.stored.get(step)
            if record is not None and record.opens_attempt:
                return record.attempt
        return None

    def with_record(self, record: StepRecord) -> RunState:
        """The state after `record` was stored (what the next step in the same process reads)."""
        stored = dict(self.stored)
        if record.opens_attempt:  # a new attempt: nothing of the old one is current any more
            stored = {s: r for s, r in stored.items() if not r.opens_attempt}
        stored[record.step] = record
        return replace(self, stored=stored)

    def record(self, step: Step) -> StepRecord | None:
        """The step's record, only if it belongs to the current attempt."""
        record = self.stored.get(step)
        attempt = self.attempt
        return record if record is not None and attempt is not None and record.attempt == attempt else None

    def last_record(self, step: Step) -> StepRecord | None:
        """The step's newest record of any attempt (what idempotent re-runs look for)."""
        return self.stored.get(step)

    def get(self, step: Step, kind: type[R]) -> R | None:
        """The step's result in the current attempt, or None (not run, or it failed)."""
        record = self.record(step)
        if record is None or record.result is None:
            return None
        if not isinstance(record.result, kind):
            raise TypeError(f"step '{step}' holds a {type(record.result).__name__}, not a {kind.__name__}")
        return record.result

    def require(self, step: Step, kind: type[R]) -> R:
        """The step's result in the current attempt; a StateError naming the step when it is missing or failed."""
        record = self.record(step)
        if record is not None and record.error is not None:
            raise StateError(f"run {self.run_key!r}: step '{step}' failed, so nothing builds on it: "
                             f"{record.error.message}")
        result = self.get(step, kind)
        if result is None:
            first = ("start the run with `validate-data` (or the whole pipeline with `python -m ml run`)"
                     if self.attempt is None else "run it first (same --run-key)")
            raise StateError(f"run {self.run_key!r}: step '{step}' has not run in the current attempt: {first}")
        return result

    @property
    def validation(self) -> Validation | None:
        return self.get(Step.VALIDATE, Validation)

    @property
    def champion_version(self) -> str | None:
        """The champion this attempt compares with (pinned by validate)."""
        validation = self.validation
        return validation.champion_version if validation is not None else None

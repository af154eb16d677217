"""The run record: one JSON document per run, whatever the run decided (README "The run record").

`build_record` is a pure function of the run state (ml.state: only the current attempt's records),
so a run that failed half-way still gets a complete, honest record. `finish_run` is the edge that
writes it: to the MLflow run (artifact `run_record.json`, tags, run status) and to the run folder.

status: promoted | skipped | blocked (data contract) | rejected (a gate failed)
        | not_approved (promotion.approval: required, and the version was rejected, timed out or is pending)
        | rolled_back (deploy failed, previous version restored)
        | failed (a step of the decision path errored; a failed drift report is listed in `errors` only)
        | deployed (a deploy that moved no alias)

Outcomes: a run that decided correctly succeeds (promoted, skipped, deployed, and a challenger rejected
while a healthy champion serves on); blocked data, a decayed champion with no acceptable challenger, a
rolled-back deploy and a failed step fail. `notify` says what needs a human: every failure, and a decay
estimated without labels or left unanswered by the retrain budget.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from ml.decision import Decision, PerformanceResult
from ml.deploy import DeployResult
from ml.drift import DriftResult
from ml.drift.report import DriftReport
from ml.gates import GateReport
from ml.registry import Approval, Promotion, Registration
from ml.result import Result
from ml.state import SIDE_STEPS, RunState, Step
from ml.train import TrainResult

if TYPE_CHECKING:
    from ml.tracking import RunContext

log = logging.getLogger(__name__)

Status = Literal["promoted", "skipped", "blocked", "rejected", "not_approved", "rolled_back", "failed", "deployed",
                 "rolling_out"]
FAILED_STATUSES = ("blocked", "rejected", "rolled_back", "failed")
#: Decisions of runs that are an operator's action rather than the pipeline's checks.
OPERATIONS = ("rollback", "deploy")


@dataclass(frozen=True)
class RunRecord(Result):
    """The record's top level; the sections (data, contract, drift, ...) are the JSON the README documents."""

    model: str
    run_id: str
    run_key: str
    dag_id: str | None
    dag_run_id: str | None
    started_at: str | None
    finished_at: str
    status: Status
    data: dict[str, Any]
    contract: dict[str, Any]
    drift: dict[str, Any]
    performance: dict[str, Any]
    decision: str
    reason: str | None
    triggers: list[str]
    #: the policy rule that decided and every input it looked at (ml.decision)
    rule: str | None
    decision_inputs: dict[str, Any]
    training: dict[str, Any] | None
    gates: dict[str, Any]
    failed_gates: list[str]
    challenger_version: str | None
    promoted: bool
    champion_version: str | None
    deployment: dict[str, Any]
    errors: dict[str, str]
    #: a challenger was rejected while a healthy champion serves on (a correct outcome)
    champion_kept: bool = False
    #: what needs a human, or None (README "Outcomes")
    notify: str | None = None
    #: seconds each step of the attempt took (the step function, not the process around it)
    timings: dict[str, float] = field(default_factory=dict)
    #: null unless promotion.approval is required: version, decision, by, at, detail
    approval: dict[str, Any] | None = None

    def failure(self) -> str | None:
        """Why the run counts as failed (None when it decided correctly: see the module docstring)."""
        if self.status not in FAILED_STATUSES or self.champion_kept:
            return None
        if self.status == "blocked":
            return f"run blocked: {self.reason}"
        if self.status == "rejected":
            return (f"challenger rejected by gate(s) {', '.join(self.failed_gates)} and champion "
                    f"v{self.champion_version} has decayed: no acceptable challenger" if self.champion_version
                    else f"challenger rejected by gate(s) {', '.join(self.failed_gates)}; there is no champion")
        if self.status == "rolled_back":
            return f"deploy failed and was rolled back: {self.deployment['detail']}"
        if self.errors:
            return "run failed: " + "; ".join(f"{k}: {v}" for k, v in self.errors.items())
        return "run failed"


def _notify(decision: Decision | None, failure: str | None) -> str | None:
    if failure is not None:
        return failure
    if decision is not None and decision.rule == "estimated_decay":
        return decision.reason
    if decision is not None and decision.rule == "budget" and "not acted on" in decision.reason:
        return decision.reason
    return None


def run_status(state: RunState) -> Status:
    """The status rules, in order: contract, step errors, the decision, the gates, the deploy, the promotion."""
    validation = state.validation
    decision = state.get(Step.DECIDE, Decision)
    operation = decision is not None and decision.decision in OPERATIONS
    if not operation and (validation is None or not validation.passed):
        validate = state.record(Step.VALIDATE)
        return "failed" if validate is not None and validate.failed else "blocked"
    if any(record.failed for step in Step if step not in SIDE_STEPS and (record := state.record(step)) is not None):
        return "failed"
    if decision is not None and decision.decision == "skip":
        return "skipped"
    report = state.get(Step.GATES, GateReport)
    if report is not None and not report.passed:
        return "rejected"
    approval = state.get(Step.APPROVE, Approval)
    if approval is not None and not approval.approved:
        return "not_approved"
    deployed = state.get(Step.DEPLOY, DeployResult)
    if deployed is not None and not deployed.ok:
        return "rolled_back" if deployed.rolled_back else "failed"
    promotion = state.get(Step.PROMOTE, Promotion)
    if promotion is not None and promotion.promoted:
        return "promoted"
    if deployed is not None and deployed.rollout is not None:
        return "rolling_out"  # deploy.strategy canary / shadow: the version runs beside the champion
    return "deployed" if deployed is not None and decision is not None and decision.decision == "deploy" else "failed"


def _drift_section(drift: DriftResult | None, report: DriftReport | None) -> dict[str, Any]:
    if drift is None or drift.skipped is not None:
        section: dict[str, Any] = {"dataset_drift": None, "drifted_share": None, "drift_share_threshold": None,
                                   "compared_with": None, "features": {}, "report": None}
        return section | ({"skipped": drift.skipped} if drift is not None else {})
    return {"dataset_drift": drift.dataset_drift, "drifted_share": drift.drifted_share,
            "drift_share_threshold": drift.drift_share_threshold, "compared_with": drift.compared_with,
            "features": {name: f.to_dict() for name, f in drift.features.items()},
            "report": report.report_path if report is not None else None,
            "output": drift.output.to_dict() if drift.output is not None else None}


def _section(result: Result | None, keys: tuple[str, ...]) -> dict[str, Any]:
    data = result.to_dict() if result is not None else {}
    return {k: data.get(k) for k in keys}


def build_record(state: RunState, *, model: str, run_id: str, finished_at: str | None = None) -> RunRecord:
    """The record of the run's current attempt. Pure: reads the state, writes nothing."""
    validation = state.validation
    decision = state.get(Step.DECIDE, Decision)
    perf = state.get(Step.PERFORMANCE, PerformanceResult)
    trained = state.get(Step.TRAIN, TrainResult)
    report = state.get(Step.GATES, GateReport)
    registered = state.get(Step.REGISTER, Registration)
    deployed = state.get(Step.DEPLOY, DeployResult)
    promotion = state.get(Step.PROMOTE, Promotion)
    errors = {str(step): record.error.message for step in Step
              if (record := state.record(step)) is not None and record.error is not None}
    if decision is not None:
        verdict, reason = decision.decision, decision.reason
    elif validation is not None and not validation.passed:
        verdict, reason = "blocked", "data contract failed: " + "; ".join(validation.problems)
    elif Step.VALIDATE in errors:
        verdict, reason = "blocked", f"validate failed: {errors[Step.VALIDATE]}"
    else:  # a check step failed before the decision
        verdict, reason = "blocked", None if validation is not None else "validation did not run"
    promoted = promotion is not None and promotion.promoted
    record = RunRecord(
        model=model, run_id=run_id, run_key=state.run_key,
        dag_id=validation.dag_id if validation else None, dag_run_id=validation.dag_run_id if validation else None,
        started_at=validation.started_at if validation else None,
        finished_at=finished_at or datetime.now(UTC).isoformat(timespec="seconds"), status=run_status(state),
        data={**_section(validation, ("reference_path", "current_path", "reference_sha256", "current_sha256")),
              "rows": validation.rows if validation else {}},
        contract={"passed": bool(validation and validation.passed),
                  "problems": (validation.problems if validation else []) or
                  ([errors[Step.VALIDATE]] if Step.VALIDATE in errors else []),
                  "warnings": validation.warnings if validation else [],
                  "quarantine": {name: q.to_dict() for name, q in validation.quarantine.items()}
                  if validation else {}},
        drift=_drift_section(state.get(Step.DRIFT, DriftResult), state.get(Step.DRIFT_REPORT, DriftReport)),
        performance=_section(perf, ("champion_version", "metric", "on_reference", "on_current", "decayed",
                                    "labelled_rows", "detail", "estimated", "estimate_decayed", "calibrated",
                                    "estimate_error")),
        decision=verdict, reason=reason, triggers=decision.triggers if decision else [],
        rule=decision.rule if decision else None, decision_inputs=decision.inputs if decision else {},
        training=_section(trained, ("estimator", "params", "window", "candidates", "train_rows", "eval_rows",
                                    "eval_source", "eval_folds", "metrics", "model_uri", "search"))
        if trained else None,
        gates={name: g.to_dict() for name, g in report.gates.items()} if report else {},
        failed_gates=report.failed if report else [],
        challenger_version=registered.version if registered else None,
        promoted=promoted,
        champion_version=promotion.version if promoted and promotion else (perf.champion_version if perf else None),
        deployment={"target": deployed.target if deployed else None,
                    **_section(deployed, ("version", "status")),
                    "rolled_back": bool(deployed and deployed.rolled_back),
                    **_section(deployed, ("url", "detail"))},
        errors=errors,
        champion_kept=bool(report and report.champion_kept),
        timings={str(step): record.seconds for step in Step
                 if (record := state.record(step)) is not None and record.seconds is not None},
        approval=approval.to_dict() if (approval := state.get(Step.APPROVE, Approval)) is not None else None,
    )
    return replace(record, notify=_notify(decision, record.failure()))


def finish_run(ctx: RunContext) -> RunRecord:
    """Build the record from the stored state and write it to MLflow (artifact, tags, the run's description,
    run status) and the run folder. A step that started and never stored its record (its process was killed)
    is recorded as failed first, naming the step, and the MLflow run ends KILLED. Releases the run lease."""
    from ml.locks import model_lock, release_lease

    with model_lock(ctx.config.name, run_key=ctx.run_key, what="the run record"):
        killed = close_killed_step(ctx)
        record = _write_record(ctx, "KILLED" if killed else None)
        release_lease(ctx.config.name, ctx.run_key)
    return record


def _write_record(ctx: RunContext, end_status: str | None) -> RunRecord:
    from ml.explain import run_note

    record = build_record(RunState.load(ctx), model=ctx.config.name, run_id=ctx.mlflow_run_id)
    document = record.to_dict()
    ctx.client.log_dict(ctx.mlflow_run_id, document, "run_record.json")
    (ctx.work_dir / "run_record.json").write_text(json.dumps(document, indent=2, default=str))
    ctx.client.set_tag(ctx.mlflow_run_id, "ct.status", record.status)
    ctx.client.set_tag(ctx.mlflow_run_id, "ct.decision", record.decision)
    if record.reason:
        ctx.client.set_tag(ctx.mlflow_run_id, "ct.reason", str(record.reason)[:4000])
    ctx.describe(run_note(record))
    ctx.client.set_terminated(ctx.mlflow_run_id, end_status or ("FAILED" if record.failure() else "FINISHED"))
    log.info("run record: %s", json.dumps(document, default=str))
    return record


def close_killed_step(ctx: RunContext) -> str | None:
    """A step marked as running (RunContext.mark_step) whose process is gone: store its failure, naming the
    step and the process, and return that message; None when no step was left unfinished."""
    from ml.errors import StepKilled
    from ml.procs import owner_alive
    from ml.state import StepError, StepRecord, new_attempt

    mark = ctx.running_step()
    if mark is None or mark.get("step") not in {s.value for s in Step}:
        return None
    if owner_alive(mark.get("owner", "")):
        log.warning("step %s of run %s is still running (%s): not closing it", mark["step"], ctx.run_key,
                    mark.get("owner"))
        return None
    step = Step(mark["step"])
    message = (f"step {step} was killed before it finished: it started at {mark.get('at')} in process "
               f"{mark.get('owner')}, which is gone, and stored no result")
    attempt = RunState.load(ctx).attempt
    opens = attempt is None
    ctx.save_record(StepRecord(step, attempt or new_attempt(), error=StepError.of(StepKilled(message)),
                               opens_attempt=opens))
    ctx.clear_step()
    log.error("%s", message)
    return message


def close_abandoned_runs(ctx: RunContext) -> list[str]:
    """End every other RUNNING MLflow run of this model whose owning process (`python -m ml run`, a rollback;
    tag ct.owner) is gone: it gets its run record, the killed step named, and ends KILLED. Returns their keys."""
    from ml.procs import owner_alive
    from ml.tracking import OWNER_TAG, RUN_KEY_TAG, RunContext

    runs = ctx.client.search_runs([ctx.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=50)
    closed = []
    for run in runs:
        owner, key = run.data.tags.get(OWNER_TAG), run.data.tags.get(RUN_KEY_TAG)
        if run.info.run_id == ctx.mlflow_run_id or not owner or not key or owner_alive(owner) is not False:
            continue
        other = RunContext(config=ctx.config, run_key=key, mlflow_run_id=run.info.run_id,
                           experiment_id=ctx.experiment_id)
        other.__dict__["client"] = ctx.client
        killed = close_killed_step(other)
        _write_record(other, "KILLED")
        log.warning("run %s was abandoned by its process %s (%s): closed with its run record", key, owner,
                    killed or "between steps")
        closed.append(key)
    return closed

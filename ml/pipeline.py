"""The pipeline: the order of the steps, and running one step against the run state.

    check:   validate -> drift -> performance -> decide
    retrain: train -> gates -> register              (only when decide says retrain)
    release: [approve ->] deploy -> promote    (approve only with promotion.approval: required)
    beside:  drift -> drift_report              (Evidently's HTML report; decides nothing: ml.state.SIDE_STEPS)

`run_step` runs one step (what each Airflow task and each `python -m ml <step>` does): it reads the run
state once, calls the step function (ml.steps), stores the step's record (result or error) in the run's
MLflow state, and raises when the outcome must stop the run (`ml.state.step_error`: contract failed, a
gate failed, the deploy rolled back), so Airflow shows the failing task with the message.
`run_pipeline` chains the steps in one process (`python -m ml run`) with exactly the functions the DAG
uses, in the same order, and renders the drift report last. `rollback` and `deploy_version` are the
operator's actions, recorded as runs of their own through the same step machinery: a decision (the
operator's), deploy, promote. Both keep `champion` naming what serves: the alias moves only after the version
serves, smoke-tested.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from ml.decision import Decision
from ml.drift import DriftResult
from ml.errors import CTError, DeployError, StateError
from ml.registry import Approval
from ml.state import (
    CHECK_STEPS,
    RETRAIN_STEPS,
    SIDE_STEPS,
    RunState,
    Step,
    StepError,
    StepRecord,
    new_attempt,
    step_error,
)
from ml.steps import StepRun, check, release, retrain

if TYPE_CHECKING:
    from ml.config import ModelConfig
    from ml.deploy import DeployResult
    from ml.record import RunRecord
    from ml.registry import Promotion
    from ml.result import Result
    from ml.tracking import RunContext

log = logging.getLogger(__name__)

STEP_FUNCTIONS: dict[Step, Callable[..., Result]] = {
    Step.VALIDATE: check.validate, Step.DRIFT: check.drift, Step.DRIFT_REPORT: check.drift_report,
    Step.PERFORMANCE: check.performance,
    Step.DECIDE: check.decide, Step.TRAIN: retrain.train, Step.GATES: retrain.gates, Step.REGISTER: retrain.register,
    Step.APPROVE: release.approve, Step.DEPLOY: release.deploy, Step.PROMOTE: release.promote,
}


def retrain_steps(config: ModelConfig) -> tuple[Step, ...]:
    """The steps after `decide` says retrain: with `promotion.approval: required`, approve before deploy."""
    if not config.promotion.approval_required:
        return RETRAIN_STEPS
    at = RETRAIN_STEPS.index(Step.DEPLOY)
    return (*RETRAIN_STEPS[:at], Step.APPROVE, *RETRAIN_STEPS[at:])


def run_step(step: Step | str, ctx: RunContext, *, state: RunState | None = None, **kwargs: Any) -> StepRecord:
    """Run one step on the run state (read from MLflow once, unless the caller passes it), store its record,
    and raise the error its record stands for. `validate` opens a new attempt; every other step joins it.
    The step holds its model's lock (ml.locks) and the run lease; a tracking server that does not answer
    fails it with TrackingUnavailable naming the step and the server."""
    from ml.locks import model_lock, take_lease
    from ml.tracking import is_tracking_failure, tracking_unavailable

    step = Step(step)
    try:
        if step in SIDE_STEPS:  # beside the decision path: no lock, no lease, no step mark (ml.state)
            return _run_step(step, ctx, state, kwargs)
        with model_lock(ctx.config.name, run_key=ctx.run_key, what=f"step {step}"):
            take_lease(ctx.config.name, ctx.run_key)
            if step is Step.VALIDATE:
                _recover_serving(ctx)
            return _run_step(step, ctx, state, kwargs)
    except CTError:
        raise
    except Exception as exc:
        if is_tracking_failure(exc):
            raise tracking_unavailable(f"step {step} of run {ctx.run_key!r}", exc) from exc
        raise


def _recover_serving(ctx: RunContext) -> None:
    """Before a run checks anything: the local target serves the champion (ml.deploy.rollout.restore_champion),
    so a deploy or server killed earlier leaves no half state behind this run; what was done is a run tag."""
    from ml.deploy.rollout import restore_champion

    restored = restore_champion(ctx.config)
    if restored is not None:
        ctx.client.set_tag(ctx.mlflow_run_id, "ct.local_recovery",
                           f"champion v{restored.version} restored: {restored.status}: {restored.detail}"[:4000])


def _run_step(step: Step, ctx: RunContext, state: RunState | None, kwargs: dict[str, Any]) -> StepRecord:
    from ml.tracking import is_tracking_failure

    opens = step is Step.VALIDATE
    if state is None:  # validate opens a new attempt: nothing earlier is current
        state = RunState(ctx.run_key) if opens else RunState.load(ctx)
    attempt = new_attempt() if opens else state.attempt
    if attempt is None:
        raise StateError(f"run {ctx.run_key!r} has no attempt to join: start it with `validate-data` (same "
                         f"--run-key), or run the whole pipeline with `python -m ml run`")
    side = step in SIDE_STEPS
    if not side:
        ctx.mark_step(step.value)
    log.info("step %s (run %s)", step, ctx.run_key)
    start = time.perf_counter()
    try:
        result = STEP_FUNCTIONS[step](StepRun(ctx, state), **kwargs)
    except Exception as exc:
        if is_tracking_failure(exc):
            raise  # nothing can be stored: the next attempt or the run record closes the run (ml.record)
        _store(ctx, StepRecord(step, attempt, error=StepError.of(exc), opens_attempt=opens,
                               seconds=round(time.perf_counter() - start, 3)), marked=not side)
        raise
    record = StepRecord(step, attempt, result=result, opens_attempt=opens,
                        seconds=round(time.perf_counter() - start, 3))
    log.info("step %s done in %.2f s", step, record.seconds)
    _store(ctx, record, marked=not side)
    error = step_error(record)
    if error is not None:
        raise error
    return record


def _store(ctx: RunContext, record: StepRecord, *, marked: bool) -> None:
    try:
        ctx.save_record(record)
        if marked:
            ctx.clear_step()
    except Exception:
        if record.error is None:
            raise
        # Storing a failure failed too (MLflow unreachable): keep the step's own error, which says more.
        log.exception("could not store the failure of step %s in MLflow", record.step)


def run_pipeline(config: ModelConfig, run_key: str, *, force_retrain: bool = False, dag_id: str | None = None,
                 dag_run_id: str | None = None) -> RunRecord:
    """The whole pipeline in this process, holding the model's lock throughout (a second run of the model
    waits CT_LOCK_TIMEOUT_S, then is refused naming this one); always ends with the run record (returned),
    unless the tracking server stopped answering (TrackingUnavailable, naming the step)."""
    from ml.drift.report_worker import start_early
    from ml.locks import model_lock, take_lease

    with model_lock(config.name, run_key=run_key, what="python -m ml run"):
        take_lease(config.name, run_key, process=True)
        start_early(config)  # the drift report's Evidently imports while MLflow does and validate runs
        ctx = owned_run(config, run_key, tags={"ct.dag_run_id": dag_run_id} if dag_run_id else None)
        kwargs: dict[Step, dict[str, Any]] = {Step.VALIDATE: {"dag_id": dag_id, "dag_run_id": dag_run_id},
                                              Step.DECIDE: {"force_retrain": force_retrain}}
        return _finish(ctx, _run_steps(config, ctx, kwargs))


def _run_steps(config: ModelConfig, ctx: RunContext, kwargs: dict[Step, dict[str, Any]]) -> CTError | None:
    """Every step the run's decisions call for; the error that stopped the run, if one did."""
    from ml.tracking import TrackingUnavailable

    state = RunState.load(ctx)  # earlier attempts count for train's once-per-run registration
    failure: CTError | None = None
    try:
        for step in CHECK_STEPS:
            state = state.with_record(run_step(step, ctx, state=state, **kwargs.get(step, {})))
        if state.get(Step.DECIDE, Decision).decision == "retrain":  # type: ignore[union-attr]
            for step in retrain_steps(config):
                state = state.with_record(run_step(step, ctx, state=state))
                approval = state.get(Step.APPROVE, Approval)
                if approval is not None and not approval.approved:
                    log.warning("%s", approval.detail)  # nobody can approve here: stop before the deploy
                    break
    except TrackingUnavailable as exc:
        return exc
    except CTError as exc:
        log.error("%s", exc)
        failure = exc
    except Exception:
        log.exception("step failed unexpectedly; writing the run record")
    _drift_report(config, ctx, state)
    return failure


def _drift_report(config: ModelConfig, ctx: RunContext, state: RunState) -> None:
    """The drift report, last: by now the Evidently process started with the run (report_worker.start_early) has
    imported it. Whatever stopped the run, a drift that was measured gets its report; a report that fails is an
    error in the record, not the run's outcome."""
    from ml.drift.report_worker import beside

    if state.get(Step.DRIFT, DriftResult) is None:
        return
    try:
        with beside(config) as extra:
            run_step(Step.DRIFT_REPORT, ctx, state=state, **extra)
    except Exception:
        log.exception("the drift report failed (the run's decisions stand)")


def _finish(ctx: RunContext, failure: CTError | None) -> RunRecord:
    """The run record, unless the tracking server is gone: then the step's error (the next run of the model,
    or this run's next attempt, closes the MLflow run with its record: ml.record.close_abandoned_runs)."""
    from ml.record import finish_run
    from ml.tracking import TrackingUnavailable, is_tracking_failure, tracking_unavailable

    if isinstance(failure, TrackingUnavailable):
        raise failure
    try:
        return finish_run(ctx)
    except Exception as exc:
        if is_tracking_failure(exc):
            raise tracking_unavailable(f"the run record of {ctx.run_key!r}", exc) from exc
        raise


def owned_run(config: ModelConfig, run_key: str, tags: dict[str, str] | None = None) -> RunContext:
    """The MLflow run of a run this process carries out whole (tagged with its owner process), after closing
    the model's runs whose processes were killed (ml.record.close_abandoned_runs)."""
    from ml.procs import owner_tag
    from ml.record import close_abandoned_runs
    from ml.tracking import OWNER_TAG, is_tracking_failure, open_run, tracking_unavailable

    try:
        ctx = open_run(config, run_key, tags={**(tags or {}), OWNER_TAG: owner_tag()})
        close_abandoned_runs(ctx)
    except Exception as exc:
        if is_tracking_failure(exc):
            raise tracking_unavailable(f"opening the MLflow run of {run_key!r}", exc) from exc
        raise
    return ctx


def _operation_key(kind: str) -> str:
    return f"{kind}-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _release(config: ModelConfig, decision: Decision, version: str, *, reason: str,
             kind: Literal["promote", "rollback"],
             run_key: str | None = None) -> tuple[RunRecord, DeployResult, Promotion | None]:
    """An operator's release as a run of its own: the decision, deploy `version`, then promote it (the alias
    moves only once the version serves). Returns the record and what deploy and promote did."""
    from ml.deploy import DeployResult
    from ml.locks import model_lock, take_lease
    from ml.record import finish_run
    from ml.registry import Promotion

    key = run_key or _operation_key(decision.decision)
    with model_lock(config.name, run_key=key, what=f"the {kind} of v{version}"):
        take_lease(config.name, key, process=True)
        ctx = owned_run(config, key)
        opened = StepRecord(Step.DECIDE, new_attempt(), result=decision, opens_attempt=True)
        ctx.save_record(opened)
        state = RunState(ctx.run_key).with_record(opened)
        try:
            state = state.with_record(run_step(Step.DEPLOY, ctx, state=state, version=version))
            state = state.with_record(run_step(Step.PROMOTE, ctx, state=state, reason=reason, kind=kind))
        except DeployError:
            pass  # the record says how the deploy ended
        finally:
            record = finish_run(ctx)
    deployed = state.get(Step.DEPLOY, DeployResult)
    if deployed is None:
        raise DeployError(f"deploying v{version} failed: {record.failure()}")
    return record, deployed, state.get(Step.PROMOTE, Promotion)


def _finished_operation(config: ModelConfig, run_key: str) -> tuple[RunRecord, Promotion] | None:
    """The record and promotion of an operation run that already promoted (a retried rollback task)."""
    from ml.record import build_record
    from ml.registry import Promotion
    from ml.tracking import open_run

    ctx = open_run(config, run_key)
    state = RunState.load(ctx)
    promotion = state.get(Step.PROMOTE, Promotion)
    if promotion is None or not promotion.promoted:
        return None
    log.info("run %s already moved champion to v%s: not rolling back again", run_key, promotion.version)
    return build_record(state, model=config.name, run_id=ctx.mlflow_run_id), promotion


def rollback(config: ModelConfig, reason: str, *, version: str | None = None,
             run_key: str | None = None) -> tuple[RunRecord, Promotion]:
    """Serve `version` (default: the version the champion replaced), smoke-tested, and move `champion` to it:
    one action, recorded as a run of its own (`run_key`, default rollback-<time>). Re-running the same
    `run_key` after it promoted returns that result instead of rolling back one version further."""
    from ml.registry import rollback_target
    from ml.tracking import mlflow_client

    if run_key is not None and (done := _finished_operation(config, run_key)) is not None:
        return done
    client = mlflow_client()
    if version is None:
        current, target = rollback_target(client, config.name)
    else:
        target = str(version)
        current = _champion_version(client, config.name)
        if current == target:
            raise StateError(f"v{target} is already the champion of '{config.name}': nothing to roll back to")
        known = sorted((str(v.version) for v in client.search_model_versions(f"name='{config.name}'")), key=int)
        if target not in known:
            raise StateError(f"'{config.name}' has no version {target} (registered: {', '.join(known) or 'none'})")
    decision = Decision("rollback", f"rollback of v{current} to v{target}: {reason}", ["manual"])
    record, deployed, promotion = _release(config, decision, target, reason=decision.reason, kind="rollback",
                                           run_key=run_key)
    if promotion is None:
        raise DeployError(f"rollback to v{target} failed to deploy ({deployed.detail}); champion stays v{current}")
    return record, promotion


def _champion_version(client: Any, name: str) -> str | None:
    from ml.registry import CHAMPION, version_by_alias

    champion = version_by_alias(client, name, CHAMPION)
    return str(champion.version) if champion is not None else None


def deploy_version(config: ModelConfig, version: str, reason: str | None = None) -> tuple[RunRecord, DeployResult]:
    """Serve a registered version on the deploy target (smoke-tested, rolled back on failure) and move
    `champion` to it, so the alias and the served version stay in step. A failed deploy leaves both as
    they were (the previous version restored, champion unmoved). `reason`: why (a promoted canary)."""
    decision = Decision("deploy", reason or f"manual deploy of v{version}", ["manual"])
    record, deployed, _ = _release(config, decision, str(version), reason=decision.reason, kind="promote")
    return record, deployed

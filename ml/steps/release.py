"""The DAG's `release` group: approve (only with `promotion.approval: required`), deploy a registered
version with a smoke test (rolled back on failure), then promote it (`champion` moves only once the
version serves). An approval comes before the deploy, so `champion` keeps naming what serves while a
version waits: approved = deployed and promoted; rejected or timed out = neither."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ml.decision import Decision
from ml.deploy import DeployResult
from ml.errors import StateError
from ml.registry import Approval, ApprovalDecision, Promotion, Registration
from ml.state import Step
from ml.train import HOLDOUT_ARTIFACT, Holdout, TrainResult

if TYPE_CHECKING:
    from ml.steps import StepRun


def approve(run: StepRun, *, decision: ApprovalDecision = "pending", by: str | None = None, at: str | None = None,
            detail: str = "") -> Approval:
    """Record a person's decision about the version this attempt registered. Airflow's approval task calls it
    twice: `pending` when it asks, then the answer. Outside Airflow nobody can answer: `pending` stays."""
    version = run.state.require(Step.REGISTER, Registration).version
    if decision == "pending" and not detail:
        detail = (f"v{version} waits for approval (promotion.approval: required): approve it in the Airflow UI "
                  f"(Required Actions), or deploy and promote it yourself: python -m ml deploy --version {version}")
    return Approval(version=version, decision=decision, by=by, at=at, detail=detail)


def deploy(run: StepRun, *, version: str | None = None) -> DeployResult:
    """Roll out the version this attempt registered (or `version`, for `deploy --version` and rollback),
    smoke-tested on holdout rows (reference rows when the attempt trained nothing). With
    `promotion.approval: required` the attempt's version is rolled out only once it was approved."""
    from ml.deploy.rollout import rollout
    from ml.deploy.smoke import smoke_records

    config = run.config
    if version is None:
        version = run.state.require(Step.REGISTER, Registration).version
        approval = run.state.get(Step.APPROVE, Approval)
        if config.promotion.approval_required and (approval is None or not approval.approved):
            state = approval.decision if approval is not None else "not asked"
            raise StateError(f"refusing to deploy v{version}: promotion.approval is required and the approval is "
                             f"{state}")
        if config.deploy.strategy != "replace" and (started := _beside_champion(run, str(version))) is not None:
            return started
    if run.state.get(Step.TRAIN, TrainResult) is not None:
        rows = Holdout.read(run.ctx.artifact(HOLDOUT_ARTIFACT)).frame
    else:
        rows = run.reference
    return rollout(config, str(version), smoke_records(rows, config, config.deploy.smoke_rows))


def _beside_champion(run: StepRun, version: str) -> DeployResult | None:
    """deploy.strategy canary / shadow: start the version beside the champion (ml.deploy.canary); None when
    there is no champion yet (the first version is deployed as usual)."""
    from ml.deploy import canary
    from ml.registry import CHAMPION, version_by_alias

    config = run.config
    if version_by_alias(run.ctx.client, config.name, CHAMPION) is None:
        return None
    kind = config.deploy.strategy
    running = canary.read_rollout(config.name)
    if running is not None and (running.kind, running.version) == (kind, version):
        started = running  # a retried deploy task: the rollout it started is still running
    else:
        started = canary.start_canary(config, version) if kind == "canary" else canary.start_shadow(config, version)
    url = next((s.get("url") for s in reversed(started.steps) if s.get("url")), None)
    ok = started.status == "running"
    then = "promotion waits for `python -m ml canary watch` (or the rollout DAG)" if kind == "canary" else \
        "compare with `python -m ml shadow-report`"
    return DeployResult(config.deploy.target, version, started.champion_version, "deployed" if ok else "failed",
                        False, url if ok else None,
                        f"{kind} v{version} beside champion v{started.champion_version}: {then}" if ok else
                        started.steps[-1]["detail"], rollout=kind)


def promote(run: StepRun, *, reason: str | None = None,
            kind: Literal["promote", "rollback"] = "promote") -> Promotion:
    """Move `champion` to the version this attempt deployed (only after a successful deploy)."""
    from ml.registry import CHAMPION, SHA_TAG, move_alias

    deployed = run.state.require(Step.DEPLOY, DeployResult)
    if not deployed.ok:
        raise StateError(f"refusing to promote v{deployed.version}: deploy status is {deployed.status}")
    if deployed.rollout is not None:
        return _not_yet(run, deployed)
    if reason is None:
        decision = run.state.get(Step.DECIDE, Decision)
        reason = f"run {run.ctx.run_key}: {decision.reason if decision is not None else 'promoted'}"
        approval = run.state.get(Step.APPROVE, Approval)
        if approval is not None and approval.approved:
            reason += f" (approved by {approval.by or 'unknown'} at {approval.at})"
    move = move_alias(run.ctx.client, run.config.name, CHAMPION, deployed.version, reason=reason[:4000], kind=kind)
    sha = (run.ctx.client.get_model_version(run.config.name, deployed.version).tags or {}).get(SHA_TAG)
    return Promotion(version=deployed.version, previous=move.previous, promoted=True, move=move, sha256=sha)


def _not_yet(run: StepRun, deployed: DeployResult) -> Promotion:
    """A canary or shadow started by the deploy: champion does not move now (the canary's test moves it)."""
    from ml.registry import AliasMove, alias_log

    started = next((e for e in reversed(alias_log(run.ctx.client, run.config.name))
                    if e["alias"] == deployed.rollout and e["version"] == deployed.version), None)
    champion = deployed.previous_version or ""
    move = AliasMove(**started) if started else AliasMove(
        alias=str(deployed.rollout), version=deployed.version, previous=None, by="", reason=deployed.detail, at="",
        kind=f"{deployed.rollout}_start")
    return Promotion(version=champion, previous=champion, promoted=False, move=move)

"""The DAG's `release` group: deploy a registered version with a smoke test (rolled back on failure),
then promote it (`champion` moves only once the version serves)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ml.decision import Decision
from ml.deploy import DeployResult
from ml.errors import StateError
from ml.registry import Promotion, Registration
from ml.state import Step
from ml.train import HOLDOUT_ARTIFACT, Holdout, TrainResult

if TYPE_CHECKING:
    from ml.steps import StepRun


def deploy(run: StepRun, *, version: str | None = None) -> DeployResult:
    """Roll out the version this attempt registered (or `version`, for `deploy --version` and rollback),
    smoke-tested on holdout rows (reference rows when the attempt trained nothing)."""
    from ml.data import read_window
    from ml.deploy.rollout import rollout
    from ml.deploy.smoke import smoke_records

    config = run.config
    if version is None:
        version = run.state.require(Step.REGISTER, Registration).version
    if run.state.get(Step.TRAIN, TrainResult) is not None:
        rows = Holdout.read(run.ctx.artifact(HOLDOUT_ARTIFACT)).frame
    else:
        rows = read_window(config.reference_path).frame
    return rollout(config, str(version), smoke_records(rows, config, config.deploy.smoke_rows))


def promote(run: StepRun, *, reason: str | None = None,
            kind: Literal["promote", "rollback"] = "promote") -> Promotion:
    """Move `champion` to the version this attempt deployed (only after a successful deploy)."""
    from ml.registry import CHAMPION, move_alias

    deployed = run.state.require(Step.DEPLOY, DeployResult)
    if not deployed.ok:
        raise StateError(f"refusing to promote v{deployed.version}: deploy status is {deployed.status}")
    if reason is None:
        decision = run.state.get(Step.DECIDE, Decision)
        reason = f"run {run.ctx.run_key}: {decision.reason if decision is not None else 'promoted'}"
    move = move_alias(run.ctx.client, run.config.name, CHAMPION, deployed.version, reason=reason[:4000], kind=kind)
    return Promotion(version=deployed.version, previous=move.previous, promoted=True, move=move)

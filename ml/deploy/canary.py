"""Safe rollout on a deploy target: a challenger in shadow, or a canary promoted or rolled back by a test.

`start_shadow` / `stop_shadow` and `start_canary` start and stop one (what the deploy step and `python -m ml
shadow ...` / `canary start` run); ml.rollout_checks looks at a running one (evaluate, watch, end: promote or
roll back). On the `local` target the champion's server is restarted
with the second model beside it (ml.serving.variants: CT_SHADOW_* / CT_CANARY_*), smoke-tested as the
champion (smoke traffic never meets the canary); on `kubernetes` a canary is a second Deployment behind the
Service (ml.deploy.kubernetes_canary).

Every step is recorded, before it is made, in the model's alias ledger (ml.registry): the alias `canary`
or `shadow` names the version while it runs (kind `canary_start` / `shadow_start`, the reason carrying the
fraction), `canary_test` records the verdict and its numbers, then `canary_promote` (champion moves to the
canary through the same deploy and promote steps as `deploy --version`, a run of its own) or
`canary_rollback` / `shadow_stop`. The rollout is also a run of its own (run key `canary-<time>` /
`shadow-<time>`) whose `rollout.json` artifact lists every step; `$CT_HOME/serving/<model>/rollout.json`
is the local copy the next look reads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ml.errors import DeployError, StateError
from ml.result import Result

if TYPE_CHECKING:
    from ml.config import ModelConfig
    from ml.deploy import DeployResult

log = logging.getLogger(__name__)

CANARY, SHADOW = "canary", "shadow"


@dataclass(frozen=True)
class Rollout(Result):
    """A shadow or canary that is running: what, beside which champion, since when, and its steps so far."""

    summary_fields = ("kind", "version", "champion_version", "fraction", "status")

    kind: Literal["canary", "shadow"]
    model: str
    version: str
    sha256: str
    champion_version: str
    target: str
    run_key: str
    started_at: str
    fraction: float | None = None
    key: str | None = None
    status: str = "running"
    steps: list[dict[str, Any]] = field(default_factory=list)

    def step(self, kind: str, detail: str, **extra: Any) -> Rollout:
        entry = {"step": kind, "at": _now(), "detail": detail, **extra}
        return replace(self, steps=[*self.steps, entry])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _state_file(name: str) -> Path:
    from ml.deploy.local import serving_dir

    return serving_dir(name) / "rollout.json"


def read_rollout(name: str) -> Rollout | None:
    """The shadow or canary running for the model (None when none is)."""
    path = _state_file(name)
    return Rollout.from_dict(json.loads(path.read_text())) if path.exists() else None


def save_rollout(config: ModelConfig, rollout: Rollout, done: bool = False) -> None:
    """Store the rollout document in its MLflow run and (while it runs) in the local state file."""
    from ml.tracking import mlflow_client, open_run

    client = mlflow_client()
    run_id = open_run(config, rollout.run_key, tags={"ct.rollout": rollout.kind}).mlflow_run_id
    client.log_dict(run_id, rollout.to_dict(), "rollout.json")
    client.set_tag(run_id, "ct.rollout.status", rollout.status)
    path = _state_file(rollout.model)
    if done:
        path.unlink(missing_ok=True)
        client.set_terminated(run_id, "FINISHED")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rollout.to_dict(), indent=2))
    tmp.replace(path)


# ---- shared edges ---------------------------------------------------------------------------------

def _champion(config: ModelConfig) -> str:
    from ml.registry import CHAMPION, version_by_alias
    from ml.tracking import mlflow_client

    found = version_by_alias(mlflow_client(), config.name, CHAMPION)
    if found is None:
        raise StateError(f"'{config.name}' has no champion: a shadow or canary runs beside one (deploy a version "
                         "first: python -m ml deploy --version N)")
    return str(found.version)


def _fetch(config: ModelConfig, version: str) -> tuple[Path, str]:
    from ml.deploy.local import serving_dir
    from ml.registry import fetch_onnx
    from ml.tracking import mlflow_client

    return fetch_onnx(mlflow_client(), config.name, str(version), serving_dir(config.name) / "models" / f"v{version}")


def _smoke_rows(config: ModelConfig) -> list[dict[str, Any]]:
    from ml.data import read_window
    from ml.deploy.smoke import smoke_records

    return smoke_records(read_window(config.reference_path).frame, config, config.deploy.smoke_rows)


def _serve_local(config: ModelConfig, champion: str, extra_args: list[str]) -> DeployResult:
    """(Re)start the local server: the champion, plus the variant flags; smoke-tested as the champion."""
    from ml.deploy.local import deploy_local
    from ml.deploy.rollout import registry_smoke_check

    path, sha = _fetch(config, champion)
    check = registry_smoke_check(config, _smoke_rows(config))
    # restart: the same champion without its variant is a restart, not "unchanged"
    return deploy_local(config.name, champion, path, sha, host=config.deploy.host, port=config.deploy.port,
                        timeout_s=config.deploy.startup_timeout_s, smoke=check, extra_args=extra_args, restart=True)


def _begin(config: ModelConfig, kind: Literal["canary", "shadow"], version: str,
           fraction: float | None) -> Rollout:
    if (running := read_rollout(config.name)) is not None:
        raise StateError(f"a {running.kind} of v{running.version} is already running for '{config.name}': end it "
                         f"first (python -m ml {running.kind} {'rollback' if running.kind == CANARY else 'stop'})")
    champion = _champion(config)
    if str(version) == champion:
        raise StateError(f"v{version} is the champion of '{config.name}': a {kind} needs another version")
    _path, sha = _fetch(config, str(version))
    key = config.deploy.canary.key if kind == CANARY else None
    return Rollout(kind=kind, model=config.name, version=str(version), sha256=sha, champion_version=champion,
                   target=config.deploy.target, run_key=f"{kind}-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"),
                   started_at=_now(), fraction=fraction, key=key)


# ---- shadow -------------------------------------------------------------------------------------

def start_shadow(config: ModelConfig, version: str) -> Rollout:
    """Serve `version` in shadow beside the champion (local target): every request scored by both."""
    from ml.registry import move_alias
    from ml.tracking import mlflow_client

    if config.deploy.target != "local":
        raise DeployError("a shadow is served by the local target only (on Kubernetes set CT_SHADOW_* on the "
                          "serving Deployment yourself: docs/serving.md)")
    rollout = _begin(config, SHADOW, version, None)
    reason = f"shadow v{version} beside champion v{rollout.champion_version}"
    move_alias(mlflow_client(), config.name, SHADOW, rollout.version, reason=reason, kind="shadow_start")
    path, _ = _fetch(config, rollout.version)
    deployed = _serve_local(config, rollout.champion_version, [
        "--shadow-model-path", str(path), "--shadow-model-sha256", rollout.sha256,
        "--shadow-model-version", rollout.version])
    if not deployed.ok:
        return finish_rollout(config, rollout.step("shadow_start", deployed.detail), "failed", "shadow_stop",
                       f"shadow v{version} failed to start: {deployed.detail}")
    rollout = rollout.step("shadow_start", reason, url=deployed.url)
    save_rollout(config, rollout)
    return rollout


def stop_shadow(config: ModelConfig, reason: str = "shadow stopped") -> Rollout:
    """Serve the champion alone again and record the end of the shadow."""
    rollout = running_rollout(config, SHADOW)
    deployed = _serve_local(config, rollout.champion_version, [])
    return finish_rollout(config, rollout, "stopped" if deployed.ok else "failed", "shadow_stop",
                   f"{reason}; champion v{rollout.champion_version} serving alone: {deployed.detail}")


def running_rollout(config: ModelConfig, kind: str) -> Rollout:
    rollout = read_rollout(config.name)
    if rollout is None or rollout.kind != kind:
        raise StateError(f"no {kind} is running for '{config.name}'")
    return rollout


def finish_rollout(config: ModelConfig, rollout: Rollout, status: str, kind: str, reason: str) -> Rollout:
    from ml.registry import clear_alias
    from ml.tracking import mlflow_client

    clear_alias(mlflow_client(), config.name, rollout.kind, reason=reason, kind=kind)
    done = replace(rollout.step(kind, reason), status=status)
    save_rollout(config, done, done=True)
    log.info("%s of %s v%s: %s (%s)", rollout.kind, config.name, rollout.version, status, reason)
    return done


# ---- canary -------------------------------------------------------------------------------------

def start_canary(config: ModelConfig, version: str, fraction: float | None = None) -> Rollout:
    """Let `version` answer `fraction` (default deploy.canary.fraction) of the traffic beside the champion."""
    from ml.registry import move_alias
    from ml.tracking import mlflow_client

    fraction = float(fraction if fraction is not None else config.deploy.canary.fraction)
    if not 0.0 < fraction < 1.0:
        raise StateError(f"canary fraction {fraction}: must be strictly between 0 and 1")
    rollout = _begin(config, CANARY, version, fraction)
    reason = (f"canary v{version} at fraction {fraction} beside champion v{rollout.champion_version} "
              f"(routing key: {rollout.key or 'prediction id'})")
    move_alias(mlflow_client(), config.name, CANARY, rollout.version, reason=reason, kind="canary_start")
    deployed = _start_canary_target(config, rollout)
    if not deployed.ok:
        return finish_rollout(config, rollout.step("canary_start", deployed.detail), "failed", "canary_rollback",
                       f"canary v{version} failed to start: {deployed.detail}")
    rollout = rollout.step("canary_start", reason, url=deployed.url, fraction=fraction)
    save_rollout(config, rollout)
    return rollout


def _start_canary_target(config: ModelConfig, rollout: Rollout) -> DeployResult:
    if config.deploy.target == "kubernetes":
        from ml.deploy.kubernetes import KubernetesTarget
        from ml.deploy.kubernetes_canary import create_canary

        return create_canary(config.name, rollout.version, rollout.sha256, float(rollout.fraction or 0),
                             KubernetesTarget.from_config(config))
    path, _ = _fetch(config, rollout.version)
    args = ["--canary-model-path", str(path), "--canary-model-sha256", rollout.sha256,
            "--canary-model-version", rollout.version, "--canary-fraction", str(rollout.fraction)]
    return _serve_local(config, rollout.champion_version, args + (["--canary-key", rollout.key] if rollout.key else []))


def remove_canary_target(config: ModelConfig, rollout: Rollout) -> str:
    if config.deploy.target == "kubernetes":
        from ml.deploy.kubernetes import KubernetesTarget
        from ml.deploy.kubernetes_canary import delete_canary

        return delete_canary(KubernetesTarget.from_config(config))
    return _serve_local(config, rollout.champion_version, []).detail

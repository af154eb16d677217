"""Looks at a running shadow or canary (started by ml.deploy.canary): the canary's guardrails and test,
its end (promoted through ml.pipeline.deploy_version, a recorded run that moves `champion`, or rolled back),
`watch_canary`, and the rollout DAG's `check_rollout` (a canary evaluated, a shadow compared).

This module sits above the pipeline (it promotes through it), so the deploy step can start a rollout
without importing it back.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ml.deploy import canary as rollouts
from ml.pipeline import deploy_version

if TYPE_CHECKING:
    from ml.abtest import CanaryVerdict
    from ml.config import ModelConfig
    from ml.deploy.canary import Rollout

log = logging.getLogger(__name__)


def canary_guardrails(url: str | None) -> dict[str, Any]:
    """The canary's requests, errors, error rate and latency from the server's GET /variants."""
    if not url:
        return {}
    try:
        with urllib.request.urlopen(f"{url}/variants", timeout=5) as response:
            doc = json.loads(response.read())
    except OSError as exc:
        log.warning("cannot read %s/variants: %s (guardrails not judged this time)", url, exc)
        return {}
    return (doc.get("variants") or {}).get(rollouts.CANARY) or {}


def evaluate_canary(config: ModelConfig, log_path: str | None = None, act: bool = True) -> CanaryVerdict:
    """One look: the guardrails and the test on the prediction log; with `act`, promote or roll back."""
    from ml.abtest import canary_test, judge_canary
    from ml.deploy.local import serving_dir
    from ml.shadow import load_log, variant_arms

    rollout = rollouts.running_rollout(config, rollouts.CANARY)
    root = Path(log_path) if log_path else serving_dir(config.name) / "predictions"
    records, labels = load_log(root, since=rollout.started_at)
    champion, canary = variant_arms(records, labels, rollout.version)
    test = canary_test(config.performance.metric, champion, canary, config.deploy.canary, config.model.threshold)
    url = next((s.get("url") for s in reversed(rollout.steps) if s.get("url")), None)
    elapsed_h = (datetime.now(UTC) - datetime.fromisoformat(rollout.started_at)).total_seconds() / 3600
    verdict = judge_canary(test, canary_guardrails(url), config.deploy.canary, elapsed_h)
    log.info("canary v%s of %s: %s (%s)", rollout.version, config.name, verdict.verdict, verdict.reason)
    if act and verdict.verdict != "waiting":
        end_canary(config, verdict.verdict, verdict.reason, verdict.to_dict())
    return verdict


def end_canary(config: ModelConfig, action: Literal["promote", "rollback"], reason: str,
               result: dict[str, Any] | None = None) -> Rollout:
    """Promote the canary (serve it alone, champion moves to it) or roll it back (the champion alone)."""
    from ml.registry import record_step
    from ml.tracking import mlflow_client

    rollout = rollouts.running_rollout(config, rollouts.CANARY)
    record_step(mlflow_client(), config.name, rollouts.CANARY, rollout.version, f"{action}: {reason}", "canary_test")
    rollout = rollout.step("canary_test", reason, verdict=action, result=result)
    rollouts.save_rollout(config, rollout)
    if action == "promote":
        # the champion's own target takes the canary's version (locally: the server restarts serving it alone),
        # then the canary Deployment goes (Kubernetes)
        record, deployed = deploy_version(config, rollout.version,
                                          reason=f"canary v{rollout.version} promoted: {reason}")
        removed = rollouts.remove_canary_target(config, rollout) if config.deploy.target == "kubernetes" else ""
        status = "promoted" if deployed.ok else "failed"
        detail = f"champion -> v{rollout.version} (run {record.run_key}): {deployed.detail} {removed}".strip()
        kind = "canary_promote" if deployed.ok else "canary_rollback"
        return rollouts.finish_rollout(config, rollout, status, kind, detail)
    deployed = rollouts.remove_canary_target(config, rollout)
    return rollouts.finish_rollout(config, rollout, "rolled_back", "canary_rollback",
                   f"{reason}; champion v{rollout.champion_version} serving alone: {deployed}")


def watch_canary(config: ModelConfig, interval_s: float = 30.0, timeout_s: float | None = None,
                 log_path: str | None = None) -> CanaryVerdict:
    """Look every `interval_s` until the canary is promoted or rolled back (or `timeout_s` passes: waiting)."""
    import time

    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        verdict = evaluate_canary(config, log_path)
        if verdict.verdict != "waiting" or (deadline is not None and time.monotonic() >= deadline):
            return verdict
        time.sleep(interval_s)


def check_rollout(config: ModelConfig) -> dict[str, Any]:
    """The rollout DAG's look: a canary is evaluated (and promoted or rolled back once decided); a shadow is
    compared (the report is stored in the shadow's MLflow run as `shadow_report.json`). Nothing running: said so."""
    from ml.shadow import compare_shadow
    from ml.tracking import mlflow_client, open_run

    running = rollouts.read_rollout(config.name)
    if running is None:
        return {"model": config.name, "kind": None, "detail": "no canary or shadow is running"}
    if running.kind == rollouts.CANARY:
        verdict = evaluate_canary(config)
        return {"model": config.name, "kind": rollouts.CANARY, "version": running.version, **verdict.summary(),
                "test": verdict.test.to_dict()}
    report = compare_shadow(config, since=running.started_at)
    run_id = open_run(config, running.run_key, tags={"ct.rollout": running.kind}).mlflow_run_id
    mlflow_client().log_dict(run_id, report.to_dict(), "shadow_report.json")
    return {"model": config.name, "kind": rollouts.SHADOW, "version": running.version, **report.summary()}

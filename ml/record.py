"""The run record: one JSON document per run, whatever the run decided (DESIGN.md contract 3).

`build_record` assembles it from the step results stored in the run (only those of the current
attempt), so a run that failed half-way still gets a complete, honest record. `finish_run` writes it
to the MLflow run (artifact `run_record.json`, tags, run status) and to the local run folder.

status: promoted | skipped | blocked (data contract) | rejected (a gate failed)
        | rolled_back (deploy failed, previous version restored) | failed (a step errored)
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.tracking import RunContext

log = logging.getLogger(__name__)

FAILED_STATUSES = ("blocked", "rejected", "rolled_back", "failed")


def _error(step: dict[str, Any] | None) -> str | None:
    return step.get("error") if step else None


def build_record(ctx: RunContext) -> dict[str, Any]:
    from ml.pipeline import STEPS

    validation = ctx.load("validate") or {}
    attempt = validation.get("attempt")
    steps: dict[str, dict[str, Any] | None] = {"validate": validation or None}
    for name in STEPS[1:]:
        result = ctx.load(name)
        steps[name] = result if result is not None and result.get("attempt") == attempt else None
    decision = steps["decide"] or {}
    drift = steps["drift"] or {}
    perf = steps["performance"] or {}
    trained = steps["train"] or {}
    gates = steps["gates"] or {}
    registered = steps["register"] or {}
    deployed = steps["deploy"] or {}
    promoted = steps["promote"] or {}

    contract_passed = bool(validation.get("passed")) and not _error(validation)
    errors = {name: _error(s) for name, s in steps.items() if _error(s)}
    if not contract_passed:
        verdict, reason = "blocked", decision.get("reason") or "data contract failed: " + "; ".join(
            validation.get("problems") or [validation.get("error") or "validation did not run"])
    else:
        verdict, reason = decision.get("decision"), decision.get("reason")

    if not contract_passed:
        status = "blocked"
    elif errors:
        status = "failed"
    elif verdict == "skip":
        status = "skipped"
    elif gates and not gates.get("passed", True):
        status = "rejected"
    elif deployed.get("status") in ("rolled_back", "failed"):
        status = "rolled_back" if deployed.get("rolled_back") else "failed"
    elif promoted.get("promoted"):
        status = "promoted"
    else:
        status = "failed" if verdict == "retrain" else (verdict or "failed")

    rows = validation.get("rows") or {}
    record: dict[str, Any] = {
        "model": ctx.config.name,
        "run_id": ctx.mlflow_run_id,
        "run_key": ctx.run_key,
        "dag_id": validation.get("dag_id"),
        "dag_run_id": validation.get("dag_run_id"),
        "started_at": validation.get("started_at"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "status": status,
        "data": {
            "reference_path": validation.get("reference_path"), "current_path": validation.get("current_path"),
            "reference_sha256": validation.get("reference_sha256"),
            "current_sha256": validation.get("current_sha256"), "rows": rows,
        },
        "contract": {"passed": contract_passed, "problems": validation.get("problems") or
                     ([validation["error"]] if validation.get("error") else []),
                     "warnings": validation.get("warnings") or []},
        "drift": {
            "dataset_drift": drift.get("dataset_drift"), "drifted_share": drift.get("drifted_share"),
            "drift_share_threshold": drift.get("drift_share_threshold"),
            "compared_with": drift.get("compared_with"),
            "features": drift.get("features", {}), "report": drift.get("report_path"),
            **({"skipped": drift["skipped"]} if "skipped" in drift else {}),
        },
        "performance": {k: perf.get(k) for k in ("champion_version", "metric", "on_reference", "on_current",
                                                  "decayed", "labelled_rows", "detail")},
        "decision": verdict or "blocked",
        "reason": reason,
        "triggers": decision.get("triggers", []),
        "training": {k: trained.get(k) for k in ("estimator", "window", "candidates", "train_rows", "eval_rows",
                                                  "eval_source", "metrics", "model_uri")} if trained else None,
        "gates": gates.get("gates", {}),
        "failed_gates": gates.get("failed", []),
        "challenger_version": registered.get("version"),
        "promoted": bool(promoted.get("promoted")),
        "champion_version": promoted.get("version") if promoted.get("promoted") else perf.get("champion_version"),
        "deployment": {"target": deployed.get("target", ctx.config.deploy.target) if deployed else None,
                       "version": deployed.get("version"), "status": deployed.get("status"),
                       "rolled_back": bool(deployed.get("rolled_back")), "url": deployed.get("url"),
                       "detail": deployed.get("detail")},
        "errors": errors,
    }
    return record


def outcome_message(record: dict[str, Any]) -> str | None:
    """Why the run counts as failed (None when it succeeded: promoted or skipped)."""
    status = record["status"]
    if status not in FAILED_STATUSES:
        return None
    if status == "blocked":
        return f"run blocked: {record['reason']}"
    if status == "rejected":
        return f"challenger rejected by gate(s) {', '.join(record['failed_gates'])}; champion unchanged"
    if status == "rolled_back":
        return f"deploy failed and was rolled back: {record['deployment']['detail']}"
    return "run failed: " + "; ".join(f"{k}: {v}" for k, v in record["errors"].items()) if record["errors"] \
        else "run failed"


def finish_run(ctx: RunContext) -> dict[str, Any]:
    """Build the record and write it to MLflow (artifact, tags, run status) and the run folder."""
    record = build_record(ctx)
    ctx.client.log_dict(ctx.mlflow_run_id, record, "run_record.json")
    (ctx.work_dir / "run_record.json").write_text(json.dumps(record, indent=2, default=str))
    ctx.client.set_tag(ctx.mlflow_run_id, "ct.status", record["status"])
    ctx.client.set_tag(ctx.mlflow_run_id, "ct.decision", record["decision"])
    if record["reason"]:
        ctx.client.set_tag(ctx.mlflow_run_id, "ct.reason", str(record["reason"])[:4000])
    ctx.client.set_terminated(ctx.mlflow_run_id, "FAILED" if outcome_message(record) else "FINISHED")
    log.info("run record: %s", json.dumps(record, default=str))
    return record

"""What a run decided, in words people read where they look: Markdown for the Airflow DAG run note, the
MLflow run description, a registered version's description and the approval request.

Pure functions of the typed results (ml.state, ml.record): no MLflow, no Airflow, no clock. The
tables are GitHub-flavoured Markdown, which both UIs render.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ml.decision import Decision
    from ml.drift import DriftResult
    from ml.gates import GateReport
    from ml.record import RunRecord
    from ml.state import Validation
    from ml.train import TrainResult


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (cells escaped: a '|' in a detail never breaks the layout)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def gate_table(gates: Mapping[str, Mapping[str, Any]]) -> str:
    """Every gate (as the record holds them: passed, value, threshold, detail) as one table."""
    if not gates:
        return "_no gates were evaluated_"
    rows = [[name, "pass" if g.get("passed") else "**FAIL**", g.get("value"), g.get("threshold"), g.get("detail")]
            for name, g in gates.items()]
    return table(["gate", "result", "value", "threshold", "detail"], rows)


def _short(sha: str | None) -> str:
    return f"`{sha[:12]}`" if sha else "–"


def data_table(validation: Validation) -> str:
    rows = [["reference", validation.reference_path, validation.rows.get("reference"),
             _short(validation.reference_sha256)],
            ["current", validation.current_path, validation.rows.get("current"), _short(validation.current_sha256)]]
    return table(["window", "path", "rows", "sha256"], rows)


def version_description(*, run_key: str, mlflow_run_id: str, decision: Decision | None, report: GateReport,
                        validation: Validation, trained: TrainResult, drift: DriftResult | None,
                        config_file: str | None, config_sha256: str | None) -> str:
    """The registered version's description: why it was trained, how it was judged, on which data."""
    gates = {name: g.to_dict() for name, g in report.gates.items()}
    champion = f"champion v{report.champion_version}" if report.champion_version else "no champion (bootstrap)"
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(trained.metrics.items()) if v == v)
    parts = [
        f"**Decision:** {decision.decision if decision else 'retrain'}: {decision.reason if decision else ''}",
        f"**Run:** `{run_key}` (MLflow run `{mlflow_run_id}`"
        + (f", Airflow `{validation.dag_id}` / `{validation.dag_run_id}`)" if validation.dag_id else ")"),
        f"### Gates (all passed, judged against {champion})", gate_table(gates),
        "### Data", data_table(validation),
        f"### Training\n{trained.estimator} on {trained.train_rows} rows (window `{trained.window}`), "
        + (f"{trained.eval_folds}-fold cross-fitted on " if trained.eval_folds else "holdout ")
        + f"{trained.eval_rows} rows from the {trained.eval_source} window: {metrics}",
    ]
    if drift is not None and drift.skipped is None:
        drifted = ", ".join(drift.drifted_features) or "none"
        parts.append(f"**Drift:** share {drift.drifted_share:.2f} (threshold {drift.drift_share_threshold}), "
                     f"drifted: {drifted}")
    if config_file:
        parts.append(f"**Config:** `{config_file}` (sha256 {_short(config_sha256)}; the file is in this "
                     "version's artifacts under `extra_files/`)")
    return "\n\n".join(parts)


def approval_body(*, model: str, version: str, decision: Decision | None, report: GateReport,
                  validation: Validation | None) -> str:
    """What the approver sees in Airflow's Required Actions: the decision, every gate, the data."""
    champion = f"v{report.champion_version}" if report.champion_version else "none yet (bootstrap)"
    parts = [
        f"Approving deploys **{model} v{version}** (smoke-tested) and then moves `champion` to it. "
        f"Until then the current champion ({champion}) keeps serving; rejecting (or no answer in time) "
        f"leaves it serving and v{version} stays the registered `challenger`.",
        f"**Decision:** {decision.decision}: {decision.reason}" if decision else "",
        "### Gates", gate_table({name: g.to_dict() for name, g in report.gates.items()}),
    ]
    if validation is not None:
        parts += ["### Data", data_table(validation)]
    return "\n\n".join(p for p in parts if p)


def run_note(record: RunRecord) -> str:
    """The DAG run note and the MLflow run description: the outcome, the decision and its reason."""
    lines = [f"**{record.status}** · decision **{record.decision}**: {record.reason or '(no reason recorded)'}"]
    facts = []
    if record.challenger_version:
        facts.append(f"challenger v{record.challenger_version}")
    if record.promoted:
        facts.append(f"champion → v{record.champion_version}")
    elif record.champion_version:
        facts.append(f"champion stays v{record.champion_version}")
    if record.gates:
        passed = sum(1 for g in record.gates.values() if g.get("passed"))
        facts.append(f"gates {passed}/{len(record.gates)} passed"
                     + (f" (failed: {', '.join(record.failed_gates)})" if record.failed_gates else ""))
    approval = record.approval
    if approval:
        who = f" by {approval['by']}" if approval.get("by") else ""
        facts.append(f"approval {approval['decision']}{who}" + (f" at {approval['at']}" if approval.get("at") else ""))
    deployment = record.deployment or {}
    if deployment.get("status"):
        facts.append(f"deploy {deployment['status']}" + (f" at {deployment['url']}" if deployment.get("url") else ""))
    if facts:
        lines.append(" · ".join(facts))
    if record.errors:
        lines.append("errors: " + "; ".join(f"{k}: {v}" for k, v in record.errors.items()))
    return "\n\n".join(lines)

"""The DAG's `check` group: validate the data contract, measure drift and the champion's performance,
decide. Each step is a function of a StepRun returning its typed result."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ml.errors import DataError
from ml.state import Step, Validation, now
from ml.steps import SNAPSHOT, snapshot_current

if TYPE_CHECKING:
    import pandas as pd

    from ml.decision import Decision, PerformanceResult
    from ml.drift import DriftResult
    from ml.steps import StepRun

log = logging.getLogger(__name__)


def validate(run: StepRun, *, dag_id: str | None = None, dag_run_id: str | None = None,
             as_of: str | None = None) -> Validation:
    """Read both windows, check the data contract, and pin the champion this attempt compares with. A
    prediction-log current window ends at `as_of` (the DAG run's time; default now) and reaches back as far
    as `data.current_window` says."""
    from datetime import UTC, datetime

    from ml.contract import check_contract
    from ml.data import read_window
    from ml.predlog import is_prediction_log, window_since
    from ml.registry import CHAMPION, ensure_registered_model, version_by_alias

    config = run.config
    ensure_registered_model(run.ctx.client, config.name)
    champion = version_by_alias(run.ctx.client, config.name, CHAMPION)
    base = Validation(started_at=now(), passed=False, dag_id=dag_id, dag_run_id=dag_run_id,
                      reference_path=config.reference_path, current_path=config.current_path,
                      champion_version=str(champion.version) if champion is not None else None)
    try:
        reference = read_window(config.reference_path, config.target)
        base = dataclasses.replace(base, reference_sha256=reference.sha256)
        until = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
        since = window_since(config.data.current_window, as_of=until,
                             champion_promoted_at=(champion.tags or {}).get("ct.champion.at") if champion else None)
        current = read_window(config.current_path, config.target, since=since, until=until) \
            if config.current_path else None
        if current is not None:
            base = dataclasses.replace(base, current_sha256=current.sha256)
            if is_prediction_log(current.path):
                snapshot, sha = snapshot_current(run.ctx, current.frame)
                base = dataclasses.replace(base, current_snapshot=snapshot, current_sha256=sha)
    except DataError as exc:
        return dataclasses.replace(base, problems=[str(exc)],
                                   rows={"reference": None, "current": None, "current_labelled": None})
    contract = check_contract(config, reference, current)
    return dataclasses.replace(base, passed=contract.passed, problems=contract.problems, warnings=contract.warnings,
                               rows={"reference": contract.reference_rows, "current": contract.current_rows,
                                     "current_labelled": contract.current_labelled_rows})


def drift(run: StepRun) -> DriftResult:
    """Drift of the current window against the reference `drift.reference` names."""
    from ml.drift import DriftResult, detect_drift

    reference, current = run.windows.reference, run.windows.current
    if current is None:
        return DriftResult.not_run("no current window configured", run.config.drift.drift_share)
    compared_with = "data.reference"
    if run.config.drift.reference == "champion":
        champion_window = _champion_window(run)
        if champion_window is not None:
            compared_with, reference = champion_window
        else:
            compared_with = "data.reference (no champion trained with a current window yet)"
    log.info("drift: current window (%d rows) vs %s (%d rows)", len(current), compared_with, len(reference))
    result = detect_drift(run.config, reference, current, report_dir=run.ctx.work_dir / "reports")
    if result.report_path:
        run.ctx.log_artifact(Path(result.report_path), "reports")
    run.ctx.client.log_metric(run.ctx.mlflow_run_id, "drift.drifted_share", result.drifted_share)
    return dataclasses.replace(result, compared_with=compared_with)


def _champion_window(run: StepRun) -> tuple[str, pd.DataFrame] | None:
    """(description, frame) of the current window the champion was trained with, from its MLflow run."""
    from ml.data import read_window
    from ml.tracking import download_run_artifact

    champion = run.champion
    if champion is None or not champion.run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_run_artifact(champion.run_id, SNAPSHOT, Path(tmp) / Path(SNAPSHOT).name)
        except Exception:  # trained without a current window (or before windows were kept)
            return None
        frame = read_window(str(path), run.config.target).frame
    return f"the current window champion v{champion.version} was trained with", frame


def performance(run: StepRun) -> PerformanceResult:
    """The champion's metric on the labelled current rows vs its holdout metric at registration."""
    from ml.data import class_labels, encode_target, labelled, model_frame
    from ml.decision import assess_performance
    from ml.metrics import score

    config = run.config
    metric = config.performance.metric
    reference, current = run.windows.reference, run.windows.current
    rows = labelled(current, config) if current is not None else None
    n_labelled = 0 if rows is None else len(rows)
    model = run.champion_model
    on_reference = on_current = None
    if model is not None:
        recorded = (run.champion.tags or {}).get(f"ct.metric.{metric}") if run.champion else None
        if recorded is not None:
            on_reference = float(recorded)
        else:  # versions registered by hand: fall back to the (in-sample) reference window
            y_ref = encode_target(reference[config.target], config, model.classes)
            on_reference = score(metric, y_ref, model.predict_proba(model_frame(reference, config)),
                                 model.threshold)
        if n_labelled:
            y = encode_target(rows[config.target], config, model.classes)
            on_current = score(metric, y, model.predict_proba(model_frame(rows, config)), model.threshold)
    elif rows is not None and n_labelled:
        class_labels(config, reference)  # contract-level sanity only; no model to score
    return assess_performance(metric, run.state.champion_version, on_reference, on_current, n_labelled,
                              config.performance.min_labelled_rows, config.performance.max_decay)


def decide(run: StepRun, *, force_retrain: bool = False) -> Decision:
    """retrain | skip | blocked, with the reason (pure logic in ml.decision)."""
    from ml.decision import PerformanceResult
    from ml.decision import decide as decide_fn
    from ml.drift import DriftResult

    validation = run.state.require(Step.VALIDATE, Validation)
    measured = run.state.get(Step.DRIFT, DriftResult)
    trained_on_current = False
    if validation.passed and run.champion is not None:
        trained_on_current = bool(validation.current_sha256) and \
            (run.champion.tags or {}).get("ct.current_sha256") == validation.current_sha256
    result = decide_fn(
        contract_passed=validation.passed, contract_problems=validation.problems,
        drift=measured if measured is not None and measured.skipped is None else None,
        performance=run.state.get(Step.PERFORMANCE, PerformanceResult),
        labelled_rows=validation.rows.get("current_labelled") or 0, force_retrain=force_retrain,
        champion_version=validation.champion_version if validation.passed else None,
        champion_trained_on_current=trained_on_current,
        min_labelled_rows=run.config.performance.min_labelled_rows)
    log.info("decision: %s (%s)", result.decision, result.reason)
    run.ctx.client.set_tag(run.ctx.mlflow_run_id, "ct.decision", result.decision)
    return dataclasses.replace(result, force_retrain=force_retrain)

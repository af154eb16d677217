"""The DAG's `check` group: validate the data contract, measure drift and the champion's performance,
decide; and beside it the drift report. Each step is a function of a StepRun returning its typed result."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from ml.errors import DataError, StateError
from ml.state import Step, Validation, now
from ml.steps import SNAPSHOT, snapshot_current

if TYPE_CHECKING:
    from datetime import datetime

    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion

    from ml.data import Window
    from ml.decision import Decision, PerformanceResult, PolicyInputs
    from ml.drift import DriftResult
    from ml.drift.output import OutputDrift
    from ml.drift.profile import ReferenceProfile
    from ml.drift.report import DriftReport
    from ml.drift.report_worker import ReportWorker
    from ml.steps import StepRun

log = logging.getLogger(__name__)


def validate(run: StepRun, *, dag_id: str | None = None, dag_run_id: str | None = None,
             as_of: str | None = None) -> Validation:
    """Read both windows, drop the rows that break the contract (blocking above
    contract.max_invalid_fraction), check the data contract, and pin the champion this attempt compares
    with. A prediction-log current window ends at `as_of` (the DAG run's time; default now) and reaches back
    as far as `data.current_window` says."""
    from ml.contract import check_contract
    from ml.registry import CHAMPION, ensure_registered_model, version_by_alias

    config = run.config
    ensure_registered_model(run.ctx.client, config.name)
    champion = version_by_alias(run.ctx.client, config.name, CHAMPION)
    base = Validation(started_at=now(), passed=False, dag_id=dag_id, dag_run_id=dag_run_id,
                      reference_path=config.reference_path, current_path=config.current_path,
                      champion_version=str(champion.version) if champion is not None else None)
    try:
        base, reference, current = _read_windows(run, base, champion, as_of)
    except DataError as exc:
        return dataclasses.replace(base, problems=[str(exc)],
                                   rows={"reference": None, "current": None, "current_labelled": None})
    contract = check_contract(config, reference, current)
    limit = config.contract.max_invalid_fraction
    dropped = [p for name, q in base.quarantine.items() if (p := q.problem(name, limit))]
    problems = [*dropped, *contract.problems]
    return dataclasses.replace(base, passed=not problems, problems=problems, warnings=contract.warnings,
                               rows={"reference": contract.reference_rows, "current": contract.current_rows,
                                     "current_labelled": contract.current_labelled_rows})


def _read_windows(run: StepRun, base: Validation, champion: ModelVersion | None, as_of: str | None
                  ) -> tuple[Validation, Window, Window | None]:
    """(validation so far, reference, current), each screened (ml.contract.screen_window); a live prediction
    log is frozen into the run as its screened snapshot."""
    from datetime import UTC, datetime

    from ml.contract import model_columns, screen_window
    from ml.data import read_window
    from ml.predlog import is_prediction_log, window_since

    config, limits = run.config, run.config.data.limits
    columns = model_columns(config)
    reference, ref_q = screen_window(config, read_window(config.reference_path, config.target, limits=limits,
                                                         columns=columns))
    base = dataclasses.replace(base, reference_sha256=reference.sha256, quarantine={"reference": ref_q})
    if not config.current_path:
        return base, reference, None
    until = datetime.fromisoformat(as_of) if as_of else datetime.now(UTC)
    since = window_since(config.data.current_window, as_of=until,
                         champion_promoted_at=(champion.tags or {}).get("ct.champion.at") if champion else None)
    current, cur_q = screen_window(config, read_window(config.current_path, config.target, since=since,
                                                       until=until, limits=limits, columns=columns))
    base = dataclasses.replace(base, current_sha256=current.sha256, quarantine={"reference": ref_q, "current": cur_q})
    if is_prediction_log(current.path):
        snapshot, sha = snapshot_current(run.ctx, current.frame)
        base = dataclasses.replace(base, current_snapshot=snapshot, current_sha256=sha)
    return base, reference, current


def drift(run: StepRun) -> DriftResult:
    """Drift of the current window against the reference `drift.reference` names (its stored profile when
    one exists: then only the current window is read). The HTML report is the drift_report step's."""
    from ml.drift import DriftResult, detect_drift

    validation = run.state.require(Step.VALIDATE, Validation)
    if not validation.current_sha256:
        return DriftResult.not_run("no current window configured", run.config.drift.drift_share)
    compared_with, profile = _reference_profile(run)
    # profiled once and kept with this run: once a version trained on this window serves, it is the
    # sliding reference (drift.reference: champion) of the runs after it
    sha = validation.current_sha256
    current = load_profile(run, sha) or store_profile(run, run.current, sha)
    log.info("drift: current window (%d rows) vs %s (%d rows)", current.rows, compared_with, profile.rows)
    result = detect_drift(run.config, profile, current)
    if result.drifted_share is not None:
        run.ctx.client.log_metric(run.ctx.mlflow_run_id, "drift.drifted_share", result.drifted_share)
    # the run history policy.k_of_n reads
    run.ctx.client.set_tag(run.ctx.mlflow_run_id, "ct.dataset_drift",
                           {True: "true", False: "false", None: "none"}[result.dataset_drift])
    return dataclasses.replace(result, compared_with=compared_with, reference_sha256=profile.sha256,
                               output=_output_drift(run))


def drift_report(run: StepRun, report_worker: ReportWorker | None = None) -> DriftReport:
    """Evidently's HTML report of what the drift step measured, on the row samples of the two profiles it
    compared (nothing is read again), logged to the run as reports/drift_report.html. `report_worker`: Evidently
    started beside the step (ml.drift.report_worker.beside) renders it."""
    from ml.drift import DriftResult
    from ml.drift.report import DriftReport, render_report

    measured = run.state.require(Step.DRIFT, DriftResult)
    if measured.skipped is not None:
        return DriftReport(None, skipped=f"drift was not measured: {measured.skipped}")
    if not run.config.drift.report_rows:
        return DriftReport(None, skipped="drift.report_rows is 0")
    current_sha = run.state.require(Step.VALIDATE, Validation).current_sha256
    reference, current = (_stored_profile(run, sha, what) for sha, what in
                          ((measured.reference_sha256, "reference"), (current_sha, "current")))
    report = render_report(run.config, measured, reference, current,
                           run.ctx.work_dir / "reports" / "drift_report.html", worker=report_worker)
    run.ctx.log_artifact(Path(report.report_path or ""), "reports")
    return report


def _stored_profile(run: StepRun, sha: str | None, what: str) -> ReferenceProfile:
    profile = load_profile(run, sha, keep=False) if sha else None
    if profile is None:
        raise StateError(f"run {run.ctx.run_key!r}: the profile of the {what} window the drift step compared "
                         f"(sha256 {sha}) is neither in this machine's cache nor in the run: run drift again")
    return profile


def _output_drift(run: StepRun) -> OutputDrift | None:
    """The pinned champion's scores on the current window against its holdout scores (ml.drift.output)."""
    from ml.drift.output import champion_output_drift, describe

    champion, current = run.champion, run.current
    if champion is None or current is None or not run.config.drift.output.enabled:
        return None
    result = champion_output_drift(run.config, run.champion_model, str(champion.version), champion.run_id, current)
    if result is not None:
        log.info("drift: %s", describe(result))
        if result.effect is not None:
            run.ctx.client.log_metric(run.ctx.mlflow_run_id, "drift.output_effect", result.effect)
    return result


def _reference_profile(run: StepRun) -> tuple[str, ReferenceProfile]:
    """(description, profile) of what the current window is compared with: data.reference, or with
    `drift.reference: champion` the current window the champion was trained with."""
    validation = run.state.require(Step.VALIDATE, Validation)
    champion = run.champion
    if run.config.drift.reference == "champion":
        sha = (champion.tags or {}).get("ct.current_sha256") if champion is not None else None
        if sha:
            found = load_profile(run, sha) or _profile_of_champion_window(run, sha)
            if found is not None:
                return f"the current window champion v{champion.version} was trained with", found
        described = "data.reference (no champion trained with a current window yet)"
    else:
        described = "data.reference"
    sha = validation.reference_sha256 or ""
    return described, load_profile(run, sha) or store_profile(run, run.reference, sha)


def load_profile(run: StepRun, sha: str, *, keep: bool = True) -> ReferenceProfile | None:
    """The stored profile of the window with this sha256: this machine's cache, else this run's, else the
    champion's run. `keep`: log it to this run too (where it is not yet), so the version this run may register
    carries it."""
    from ml.drift.profile import PROFILES_FOLDER, ReferenceProfile, profile_key
    from ml.tracking import ct_home, download_run_artifact

    key = profile_key(run.config, sha)
    cached = ct_home() / "cache" / PROFILES_FOLDER / f"{key}.npz"
    sources = [run.ctx.mlflow_run_id] + ([run.champion.run_id] if run.champion and run.champion.run_id else [])
    found_in = None
    for run_id in sources if not cached.exists() else []:
        try:
            download_run_artifact(run_id, f"{PROFILES_FOLDER}/{key}.npz", cached)
        except Exception:  # that run holds no profile of this window
            continue
        found_in = run_id
        break
    if not cached.exists():
        return None
    profile = ReferenceProfile.from_bytes(cached.read_bytes())
    if profile.sha256 != sha:
        return None
    if keep and found_in != run.ctx.mlflow_run_id:
        run.ctx.log_artifact(cached, PROFILES_FOLDER)
    return profile


def store_profile(run: StepRun, frame: pd.DataFrame, sha: str) -> ReferenceProfile:
    """Profile a window (canonical features), keep it in the cache and in this run (with the version this run
    may register, so later runs against the same window read only their current window)."""
    from ml.data import model_frame
    from ml.drift.profile import PROFILES_FOLDER, ReferenceProfile, profile_key
    from ml.tracking import ct_home

    profile = ReferenceProfile.build(model_frame(frame, run.config), run.config, sha, seed=run.config.training.seed)
    path = ct_home() / "cache" / PROFILES_FOLDER / f"{profile_key(run.config, sha)}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    partial.write_bytes(profile.to_bytes())
    partial.replace(path)
    run.ctx.log_artifact(path, PROFILES_FOLDER)
    return profile


def _profile_of_champion_window(run: StepRun, sha: str) -> ReferenceProfile | None:
    """Profile the current window the champion was trained with, from its MLflow run (no stored profile)."""
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
    return store_profile(run, frame, sha)


def performance(run: StepRun) -> PerformanceResult:
    """The champion's metric on the labelled current rows vs its holdout metric at registration, and its
    label-free estimate on the whole current window."""
    from ml.data import encode_target, labelled, model_frame
    from ml.decision import assess_performance
    from ml.estimate import calibration_from_tags, calibration_test, estimate_metric
    from ml.metrics import score

    config = run.config
    metric = config.performance.metric
    current = run.current
    model = run.champion_model
    tags = (run.champion.tags or {}) if run.champion is not None else {}
    rows = labelled(current, config) if current is not None else None
    n_labelled = 0 if rows is None else len(rows)
    on_reference = on_current = estimated = follows = None
    calibration = calibration_from_tags(tags)
    if model is not None:
        recorded = tags.get(f"ct.metric.{metric}")
        if recorded is not None:
            on_reference = float(recorded)
        else:  # versions registered by hand: fall back to the (in-sample) reference window
            reference = run.reference
            y_ref = encode_target(reference[config.target], config, model.classes)
            on_reference = score(metric, y_ref, model.predict_proba(model_frame(reference, config)),
                                 model.threshold)
        proba = None
        if current is not None and len(current) and config.performance.estimate:
            proba = model.predict_proba(model_frame(current, config))
            estimated = estimate_metric(metric, proba, calibration, model.threshold)
        if n_labelled:
            y = encode_target(rows[config.target], config, model.classes)
            # every row labelled: `rows` is the current window itself, already scored
            labelled_proba = proba if rows is current and proba is not None else \
                model.predict_proba(model_frame(rows, config))
            on_current = score(metric, y, labelled_proba, model.threshold)
            follows = calibration_test(y, labelled_proba, calibration)
    return assess_performance(metric, run.state.champion_version, on_reference, on_current, n_labelled,
                              config.performance.min_labelled_rows, config.performance.max_decay,
                              estimated=estimated, calibrated=calibration is not None, calibration=follows,
                              max_calibration_gap=config.performance.max_calibration_gap,
                              confidence=config.gates.confidence)


def hours_since(as_of: datetime, created_ms: int) -> float:
    """Hours from a version's registration (MLflow's milliseconds) to `as_of`, never negative: `as_of` is the
    run's start to the second, so a run started within the second its champion was registered in would
    otherwise be "-0.00001 h" after it, and even `policy.cooldown: null` (0 h) would count that as within."""
    return max(0.0, (as_of.timestamp() * 1000 - created_ms) / 3_600_000)


def policy_inputs(run: StepRun, validation: Validation, trained_on_current: bool) -> PolicyInputs:
    """What the retrain policy needs from the registry and from this model's earlier runs (MLflow), asked
    for only where the config's policy uses it."""
    from datetime import datetime, timedelta

    from ml.decision import PolicyInputs

    rules, ctx = run.config.policy, run.ctx
    as_of = datetime.fromisoformat(validation.started_at)
    hours = None
    if run.champion is not None and run.champion.creation_timestamp:
        hours = hours_since(as_of, run.champion.creation_timestamp)
    labelled_rows = validation.rows.get("current_labelled") or 0
    recent: list[bool | None] = []
    if rules.k_of_n and rules.k_of_n[1] > 1:
        earlier = ctx.client.search_runs([ctx.experiment_id], "tags.`ct.dataset_drift` != ''",
                                         order_by=["attributes.start_time DESC"], max_results=rules.k_of_n[1])
        recent = [{"true": True, "false": False}.get(r.data.tags.get("ct.dataset_drift", ""))
                  for r in earlier if r.info.run_id != ctx.mlflow_run_id][: rules.k_of_n[1] - 1]
    retrains = 0
    if rules.max_retrains_per_week is not None:
        since = int((as_of - timedelta(days=7)).timestamp() * 1000)
        retrains = sum(r.info.run_id != ctx.mlflow_run_id for r in ctx.client.search_runs(
            [ctx.experiment_id], f"tags.`ct.decision` = 'retrain' and attributes.start_time >= {since}",
            max_results=1000))
    return PolicyInputs(new_labelled_rows=0 if trained_on_current else labelled_rows, hours_since_retrain=hours,
                        recent_drift=recent, retrains_last_week=retrains)


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
        min_labelled_rows=run.config.performance.min_labelled_rows, config=run.config,
        policy=policy_inputs(run, validation, trained_on_current) if validation.passed else None)
    log.info("decision: %s (%s)", result.decision, result.reason)
    run.ctx.client.set_tag(run.ctx.mlflow_run_id, "ct.decision", result.decision)
    return dataclasses.replace(result, force_retrain=force_retrain)

"""The DAG's `retrain` group: train a challenger (ONNX), judge it with the gates, register it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ml.decision import Decision
from ml.drift import DriftResult
from ml.errors import StateError
from ml.gates import GateReport
from ml.state import Step, Validation
from ml.steps import snapshot_current
from ml.train import HOLDOUT_ARTIFACT, Holdout, TrainingData, TrainResult

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ml.registry import Registration
    from ml.search import SearchReport
    from ml.steps import StepRun

log = logging.getLogger(__name__)


def train(run: StepRun) -> TrainResult:
    """Fit the challenger, export it to ONNX and log it (and its holdout) to the run."""
    from ml.challenger import fit_best_of
    from ml.data import model_frame
    from ml.estimate import fit_calibration
    from ml.export import OnnxModel, to_onnx
    from ml.registry import version_for_run
    from ml.tracking import download_model

    config, ctx = run.config, run.ctx
    previous = run.state.last_record(Step.TRAIN)  # of any attempt: registration is once per run
    done = previous.result if previous is not None else None
    if isinstance(done, TrainResult) and version_for_run(ctx.client, config.name, ctx.mlflow_run_id):
        log.info("this run already registered a version from model %s: not training again", done.model_id)
        return done
    splits, inputs = _training_windows(run)
    run.release_windows()  # the fits need the memory more
    challenger = fit_best_of(config, splits)
    data = challenger.onnx or to_onnx(challenger.pipeline, config, challenger.data.classes,
                                      seen=model_frame(challenger.data.eval_frame, config))
    info = ctx.log_onnx_model(data, estimator=challenger.estimator, params=challenger.params,
                              train_rows=len(challenger.data.x_train), eval_rows=len(challenger.data.eval_frame),
                              eval_source=challenger.data.eval_source, metrics=challenger.metrics,
                              example=challenger.data.x_train.head(5),
                              estimator_params=challenger.pipeline.steps[-1][1].get_params(deep=False))
    ctx.log_window_inputs(inputs, model_id=info.model_id)
    if challenger.search is not None:
        log_search(ctx.client, ctx.mlflow_run_id, challenger.search)
    model = OnnxModel.load(download_model(info.model_uri, ctx.work_dir / "challenger"))
    holdout = challenger.holdout
    holdout_path = ctx.work_dir / HOLDOUT_ARTIFACT
    holdout.write(holdout_path)
    ctx.log_artifact(holdout_path, str(holdout_path.parent.relative_to(ctx.work_dir)))
    return TrainResult(model_id=info.model_id, model_uri=info.model_uri, onnx_sha256=model.sha256,
                       onnx_size_bytes=model.size_bytes, estimator=challenger.estimator,
                       train_rows=len(challenger.data.x_train), eval_rows=len(challenger.data.eval_frame),
                       eval_source=challenger.data.eval_source, eval_folds=challenger.data.folds,
                       metrics=challenger.metrics, classes=challenger.data.classes, window=challenger.window,
                       candidates=challenger.candidates, params=challenger.params, search=challenger.search,
                       calibration=fit_calibration(holdout.y, holdout.judged(holdout.sklearn_proba)))


def _training_windows(run: StepRun) -> tuple[dict[str, TrainingData], list[Any]]:
    """What training needs from the windows, taken before any fit so that their memory can be freed for it:
    each training window's split (`training.window`; auto: also the current window alone after a performance
    decay), the windows' lineage inputs, and the current window's snapshot in the run."""
    from ml.challenger import split_windows

    config, ctx = run.config, run.ctx
    validation = run.state.require(Step.VALIDATE, Validation)
    decision = run.state.get(Step.DECIDE, Decision)
    windows = [config.training.window]
    if config.training.window == "auto":
        decayed = decision is not None and "performance_decay" in decision.triggers
        windows = ["all", "current"] if decayed else ["all"]
    reference, current = run.windows.reference, run.windows.current
    # described first: describing an object column takes a transient ~50 MB at a million rows, better spent
    # before the split's frames exist
    inputs = ctx.window_inputs([("reference", reference, validation.reference_path, validation.reference_sha256),
                                *([("current", current, validation.current_path, validation.current_sha256)]
                                  if current is not None else [])])
    splits = split_windows(config, reference, current, windows)
    if current is not None and not validation.current_snapshot:
        snapshot_current(ctx, current)  # the window drift.reference: champion compares with once this one serves
    return splits, inputs


def log_search(client: MlflowClient, run_id: str, report: SearchReport) -> None:
    """The search in the MLflow run: each candidate's setting (param), CV score and times (metrics), the
    chosen one and each candidate's fate (tags: a retry whose budget ends elsewhere may change them)."""
    import json
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(f"search.{c.name}.{key}", value, now, 0) for c in report.candidates
               for key, value in ((f"cv_{report.metric}", c.cv_score), ("cv_seconds", c.cv_seconds),
                                  ("refit_seconds", c.refit_seconds)) if value is not None]
    params = [Param(f"search.{c.name}", json.dumps(c.setting, sort_keys=True)) for c in report.candidates]
    tags = [RunTag("ct.search.chosen", str(report.chosen)),
            *(RunTag(f"ct.search.{c.name}", f"{c.status}: {c.reason}" if c.reason else c.status)
              for c in report.candidates)]
    client.log_batch(run_id, metrics=[*metrics, Metric("search.elapsed_s", report.elapsed_s, now, 0)],
                     params=params, tags=[RunTag(t.key, t.value[:5000]) for t in tags])


def gates(run: StepRun) -> GateReport:
    """Evaluate every gate on the holdout the challenger never saw (or, cross-fitted, on each row's fit without
    it); the champion judged on the same rows."""
    from ml.data import model_frame
    from ml.export import OnnxModel
    from ml.gates import evaluate_gates
    from ml.tracking import download_model

    config, ctx = run.config, run.ctx
    trained = run.state.require(Step.TRAIN, TrainResult)
    challenger_path = ctx.work_dir / "challenger" / "model.onnx"
    if not challenger_path.exists():  # trained elsewhere (a pod, a Databricks job)
        challenger_path = download_model(trained.model_uri, ctx.work_dir / "challenger")
    challenger = OnnxModel.load(challenger_path, expected_sha256=trained.onnx_sha256)
    holdout = Holdout.read(ctx.artifact(HOLDOUT_ARTIFACT))
    features = model_frame(holdout.frame, config)
    champion = run.champion_model
    groups = holdout.frame[config.sensitive_feature] if config.sensitive_feature in holdout.frame.columns else None
    served = challenger.predict_proba(features)
    report = evaluate_gates(config, y=holdout.y, challenger_proba=holdout.judged(served), onnx_proba=served,
                            sklearn_proba=holdout.sklearn_proba,
                            champion_proba=champion.predict_proba(features) if champion is not None else None,
                            champion_version=run.state.champion_version, groups=groups,
                            latency_p99_ms=challenger.single_row_latency_ms(features),
                            size_bytes=challenger.size_bytes, champion_decayed=_champion_decayed(run))
    for name, gate in report.gates.items():
        if gate.value is not None:
            ctx.client.log_metric(ctx.mlflow_run_id, f"gate.{name}", gate.value)
    return report


def _champion_decayed(run: StepRun) -> bool:
    from ml.decision import PerformanceResult

    performance = run.state.get(Step.PERFORMANCE, PerformanceResult)
    return performance is not None and performance.decayed


def register(run: StepRun) -> Registration:
    """Register the gated challenger (once per run) with lineage tags; move `challenger` to it."""
    from ml.config import config_sha256
    from ml.estimate import calibration_tag
    from ml.explain import version_description
    from ml.registry import CHALLENGER, CONFIG_SHA_TAG, Registration, move_alias, register_version, version_tags
    from ml.tracking import code_version

    config, ctx = run.config, run.ctx
    report = run.state.get(Step.GATES, GateReport)
    if report is None or not report.passed:
        raise StateError("refusing to register: the gates of this attempt did not pass (or did not run)")
    trained = run.state.require(Step.TRAIN, TrainResult)
    validation = run.state.require(Step.VALIDATE, Validation)
    decision, drift = run.state.get(Step.DECIDE, Decision), run.state.get(Step.DRIFT, DriftResult)
    config_sha = config_sha256(config.source) if config.source else None
    tags = version_tags(run_key=ctx.run_key, mlflow_run_id=ctx.mlflow_run_id, code_version=code_version(),
                        validation=validation, trained=trained, gates=report, decision=decision, drift=drift)
    tags |= {CONFIG_SHA_TAG: config_sha} if config_sha else {}
    description = version_description(run_key=ctx.run_key, mlflow_run_id=ctx.mlflow_run_id, decision=decision,
                                      report=report, validation=validation, trained=trained, drift=drift,
                                      config_file=config.source, config_sha256=config_sha)
    tags |= calibration_tag(trained.calibration)  # what the label-free estimate of later runs reads (ml.estimate)
    version, created = register_version(ctx.client, config.name, trained.model_uri, trained.model_id,
                                        ctx.mlflow_run_id, tags, description=description)
    move = move_alias(ctx.client, config.name, CHALLENGER, str(version.version),
                      reason=f"passed gates in run {ctx.run_key}")
    return Registration(version=str(version.version), created=created, challenger_alias=move)

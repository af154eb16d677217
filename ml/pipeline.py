"""The pipeline steps, each a function of a RunContext: what the DAG's operators and the CLI call.

    validate -> drift -> performance -> decide -> train -> gates -> register -> deploy -> promote -> record

`execute(step, ctx)` runs one step and stores its result (or its error) in the run's MLflow state,
then raises when the step's outcome must stop the run (contract failed, a gate failed, the deploy
rolled back), so Airflow shows the failing task with the message. `run_pipeline` chains the steps in
one process (`python -m ml run`), with exactly the functions the DAG uses, in the same order.

Every step after `validate` stamps the `attempt` id that `validate` drew, so the run record never
mixes results of an earlier attempt of the same run with the current one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import ContractError, CTError, DataError, DeployError, GateError, StateError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ml.config import ModelConfig
    from ml.export import OnnxModel
    from ml.tracking import RunContext

log = logging.getLogger(__name__)

STEPS = ("validate", "drift", "performance", "decide", "train", "gates", "register", "deploy", "promote")
RETRAIN_STEPS = ("train", "gates", "register", "deploy", "promote")


class GatesFailed(GateError):
    """At least one gate failed: the challenger is rejected (not registered)."""


@cache
def code_version() -> str:
    """The code that ran: $CT_CODE_VERSION, else the git commit of this checkout, else 'unknown'."""
    if os.environ.get("CT_CODE_VERSION"):
        return os.environ["CT_CODE_VERSION"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _attempt(ctx: RunContext) -> str:
    return ctx.require("validate")["attempt"]


def _current_step(ctx: RunContext, step: str) -> dict[str, Any] | None:
    """A stored step result, only if it belongs to the current attempt."""
    result = ctx.load(step)
    validate = ctx.load("validate")
    if result is None or validate is None or result.get("attempt") != validate.get("attempt"):
        return None
    return result


def _step_result(ctx: RunContext, step: str, *, this_attempt: bool = False) -> dict[str, Any]:
    """The result a later step builds on: this attempt's, else (unless `this_attempt`) the run's last.
    A stored failure is an error naming the step, not a KeyError deeper down."""
    result = _current_step(ctx, step)
    if result is None:
        if this_attempt:
            raise StateError(f"run {ctx.run_key!r}: step '{step}' has not run in the current attempt "
                             f"(started by the last validate-data); run it first")
        result = ctx.require(step)
    if "error" in result:
        raise StateError(f"run {ctx.run_key!r}: step '{step}' failed, so nothing builds on it: {result['error']}")
    return result


SNAPSHOT = "windows/current.jsonl"


def _windows(ctx: RunContext) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The run's windows. A prediction log (live: the server keeps appending) is read from the snapshot
    validate took, so every step of the attempt sees the rows the contract checked."""
    from ml.data import load_windows, read_window

    validation = ctx.load("validate") or {}
    if validation.get("current_snapshot"):
        snapshot = ctx.artifact(validation["current_snapshot"])
        reference = read_window(ctx.config.reference_path, ctx.config.target)
        return reference.frame, read_window(str(snapshot), ctx.config.target).frame
    reference, current = load_windows(ctx.config)
    return reference.frame, (current.frame if current is not None else None)


def _snapshot(ctx: RunContext, current: pd.DataFrame) -> tuple[str, str]:
    """Freeze a current window into the run (artifact windows/current.jsonl): (artifact path, sha256).
    validate does it for a live prediction log; train for any window (the sliding drift reference)."""
    from ml.data import sha256_of

    path = ctx.work_dir / SNAPSHOT
    path.parent.mkdir(parents=True, exist_ok=True)
    current.to_json(path, orient="records", lines=True, date_format="iso")
    ctx.log_artifact(path, str(Path(SNAPSHOT).parent))
    return SNAPSHOT, sha256_of(path)


def _champion(ctx: RunContext) -> tuple[str | None, OnnxModel | None, dict[str, str]]:
    """(version, loaded ONNX model, version tags) of the current champion, or (None, None, {})."""
    from ml.export import OnnxModel
    from ml.registry import CHAMPION, ensure_registered_model, fetch_onnx, version_by_alias
    from ml.tracking import ct_home

    ensure_registered_model(ctx.client, ctx.config.name)
    mv = version_by_alias(ctx.client, ctx.config.name, CHAMPION)
    if mv is None:
        return None, None, {}
    path, sha = fetch_onnx(ctx.client, ctx.config.name, mv.version,
                           ct_home() / "cache" / ctx.config.name / f"v{mv.version}")
    return str(mv.version), OnnxModel.load(path, expected_sha256=sha), dict(mv.tags or {})


# ---- steps ---------------------------------------------------------------------------------------

def validate(ctx: RunContext, *, dag_id: str | None = None, dag_run_id: str | None = None) -> dict[str, Any]:
    """Read both windows and check the data contract."""
    from ml.contract import check_contract
    from ml.data import read_window
    from ml.predlog import is_prediction_log

    config = ctx.config
    result: dict[str, Any] = {
        "attempt": uuid.uuid4().hex, "started_at": _now(), "dag_id": dag_id, "dag_run_id": dag_run_id,
        "reference_path": config.reference_path, "current_path": config.current_path,
        "reference_sha256": None, "current_sha256": None,
    }
    try:
        reference = read_window(config.reference_path, config.target)
        result["reference_sha256"] = reference.sha256
        current = read_window(config.current_path, config.target) if config.current_path else None
        result["current_sha256"] = current.sha256 if current else None
        if current is not None and is_prediction_log(current.path):
            result["current_snapshot"], result["current_sha256"] = _snapshot(ctx, current.frame)
    except DataError as exc:
        return {**result, "passed": False, "problems": [str(exc)], "warnings": [],
                "rows": {"reference": None, "current": None, "current_labelled": None}}
    contract = check_contract(config, reference, current)
    return {**result, "passed": contract.passed, "problems": contract.problems, "warnings": contract.warnings,
            "rows": {"reference": contract.reference_rows, "current": contract.current_rows,
                     "current_labelled": contract.current_labelled_rows}}


def drift(ctx: RunContext) -> dict[str, Any]:
    """Evidently drift report of current vs reference (skipped without a current window)."""
    from ml.drift import detect_drift

    reference, current = _windows(ctx)
    if current is None:
        return {"attempt": _attempt(ctx), "skipped": "no current window configured"}
    compared_with = "data.reference"
    if ctx.config.drift.reference == "champion":
        champion_window = _champion_window(ctx)
        if champion_window is not None:
            compared_with, reference = champion_window
        else:
            compared_with = "data.reference (no champion trained with a current window yet)"
    log.info("drift: current window (%d rows) vs %s (%d rows)", len(current), compared_with, len(reference))
    result = detect_drift(ctx.config, reference, current, report_dir=ctx.work_dir / "reports")
    if result.report_path:
        ctx.log_artifact(Path(result.report_path), "reports")
    ctx.client.log_metric(ctx.mlflow_run_id, "drift.drifted_share", result.drifted_share)
    return {"attempt": _attempt(ctx), "compared_with": compared_with, **result.to_dict()}


def _champion_window(ctx: RunContext) -> tuple[str, pd.DataFrame] | None:
    """(description, frame) of the current window the champion was trained with, from its MLflow run."""
    from ml.data import read_window
    from ml.registry import CHAMPION, ensure_registered_model, version_by_alias
    from ml.tracking import download_run_artifact

    ensure_registered_model(ctx.client, ctx.config.name)
    mv = version_by_alias(ctx.client, ctx.config.name, CHAMPION)
    if mv is None or not mv.run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_run_artifact(mv.run_id, SNAPSHOT, Path(tmp) / Path(SNAPSHOT).name)
        except Exception:  # trained without a current window (or before windows were kept)
            return None
        frame = read_window(str(path), ctx.config.target).frame
    return f"the current window champion v{mv.version} was trained with", frame


def performance(ctx: RunContext) -> dict[str, Any]:
    """The champion's metric on the labelled current rows vs its holdout metric at registration."""
    from ml.data import class_labels, encode_target, labelled, model_frame
    from ml.decision import assess_performance
    from ml.metrics import score

    config = ctx.config
    metric = config.performance.metric
    version, model, tags = _champion(ctx)
    reference, current = _windows(ctx)
    rows = labelled(current, config) if current is not None else None
    n_labelled = 0 if rows is None else len(rows)
    on_reference = on_current = None
    if model is not None:
        recorded = tags.get(f"ct.metric.{metric}")
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
    result = assess_performance(metric, version, on_reference, on_current, n_labelled,
                                config.performance.min_labelled_rows, config.performance.max_decay)
    return {"attempt": _attempt(ctx), **result.to_dict()}


def decide(ctx: RunContext, *, force_retrain: bool = False) -> dict[str, Any]:
    """retrain | skip | blocked, with the reason (pure logic in ml.decision)."""
    from ml.decision import PerformanceResult
    from ml.decision import decide as decide_fn
    from ml.drift import DriftResult
    from ml.registry import CHAMPION, ensure_registered_model, version_by_alias

    validation = ctx.require("validate")
    drift_state = _current_step(ctx, "drift")
    perf_state = _current_step(ctx, "performance")
    drift_result = DriftResult.from_dict({k: v for k, v in drift_state.items()
                                          if k not in ("attempt", "compared_with")}) \
        if drift_state and "features" in drift_state else None
    perf_result = PerformanceResult(**{k: v for k, v in perf_state.items() if k != "attempt"}) \
        if perf_state else None
    champion_version = trained_on_current = None
    if validation["passed"]:
        ensure_registered_model(ctx.client, ctx.config.name)
        mv = version_by_alias(ctx.client, ctx.config.name, CHAMPION)
        if mv is not None:
            champion_version = str(mv.version)
            trained_on_current = bool(validation["current_sha256"]) and \
                (mv.tags or {}).get("ct.current_sha256") == validation["current_sha256"]
    result = decide_fn(
        contract_passed=validation["passed"], contract_problems=validation["problems"], drift=drift_result,
        performance=perf_result, labelled_rows=(validation["rows"].get("current_labelled") or 0),
        force_retrain=force_retrain, champion_version=champion_version,
        champion_trained_on_current=bool(trained_on_current),
        min_labelled_rows=ctx.config.performance.min_labelled_rows)
    log.info("decision: %s (%s)", result.decision, result.reason)
    ctx.client.set_tag(ctx.mlflow_run_id, "ct.decision", result.decision)
    return {"attempt": _attempt(ctx), "force_retrain": force_retrain, **result.to_dict()}


def train(ctx: RunContext) -> dict[str, Any]:
    """Fit the challenger, export it to ONNX and log it (and its holdout) to the run."""
    import mlflow
    import mlflow.onnx
    import onnx
    import onnxruntime

    from ml.export import OnnxModel, to_onnx
    from ml.registry import version_for_run
    from ml.train import TrainResult, fit_best_challenger

    config = ctx.config
    attempt = _attempt(ctx)
    previous = ctx.load("train")
    if previous and "model_id" in previous and version_for_run(ctx.client, config.name, ctx.mlflow_run_id):
        log.info("this run already registered a version from model %s: not training again", previous["model_id"])
        return {**previous, "attempt": attempt}
    reference, current = _windows(ctx)
    triggers = (_current_step(ctx, "decide") or {}).get("triggers", [])
    windows = [config.training.window]
    if config.training.window == "auto":
        windows = ["all", "current"] if "performance_decay" in triggers else ["all"]
    challenger = fit_best_challenger(config, reference, current, windows)
    validation = ctx.require("validate")
    if current is not None and not validation.get("current_snapshot"):
        _snapshot(ctx, current)  # the window drift.reference: champion compares with once this one serves
    data = to_onnx(challenger.pipeline, config, challenger.data.classes)
    with mlflow.start_run(run_id=ctx.mlflow_run_id):
        info = mlflow.onnx.log_model(onnx.load_model_from_string(data), name="model", save_as_external_data=False,
                                     pip_requirements=[f"onnxruntime=={onnxruntime.__version__}"],
                                     metadata={"estimator": config.model.estimator},
                                     params={"estimator": config.model.estimator,
                                             **{f"param.{k}": str(v) for k, v in config.model.params.items()}})
        mlflow.log_params({"estimator": config.model.estimator, "train_rows": len(challenger.data.x_train),
                           "eval_rows": len(challenger.data.eval_frame), "eval_source": challenger.data.eval_source})
        mlflow.log_metrics({f"challenger.{k}": v for k, v in challenger.metrics.items() if v == v})
    stored = _download_model(info.model_uri, ctx.work_dir / "challenger")
    model = OnnxModel.load(stored)
    holdout = challenger.data.eval_frame.copy()
    holdout["__ct_y"] = challenger.data.y_eval
    for i in range(challenger.eval_proba.shape[1]):
        holdout[f"__ct_sklearn_p{i}"] = challenger.eval_proba[:, i]
    holdout_path = ctx.work_dir / "challenger" / "holdout.parquet"
    holdout.to_parquet(holdout_path, index=False)
    ctx.log_artifact(holdout_path, "challenger")
    result = TrainResult(model_id=info.model_id, model_uri=info.model_uri, onnx_sha256=model.sha256,
                         onnx_size_bytes=model.size_bytes, estimator=config.model.estimator,
                         train_rows=len(challenger.data.x_train), eval_rows=len(challenger.data.eval_frame),
                         eval_source=challenger.data.eval_source, metrics=challenger.metrics,
                         classes=challenger.data.classes, window=challenger.window,
                         candidates=challenger.candidates)
    return {"attempt": attempt, **result.to_dict()}


def _download_model(model_uri: str, dest: Path) -> Path:
    import mlflow

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = list(Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp)).rglob("*.onnx"))
        if len(files) != 1:
            raise StateError(f"{model_uri}: expected one .onnx file, found {len(files)}")
        shutil.copyfile(files[0], dest / "model.onnx")
    return dest / "model.onnx"


def _holdout(ctx: RunContext) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(raw holdout rows, labels, sklearn probabilities) stored by the train step."""
    import pandas as pd

    frame = pd.read_parquet(ctx.artifact("challenger/holdout.parquet"))  # fetched when trained elsewhere
    proba_cols = sorted((c for c in frame.columns if c.startswith("__ct_sklearn_p")), key=lambda c: int(c[14:]))
    return (frame.drop(columns=[*proba_cols, "__ct_y"]), frame["__ct_y"].to_numpy(),
            frame[proba_cols].to_numpy())


def gates(ctx: RunContext) -> dict[str, Any]:
    """Evaluate every gate on the holdout the challenger never saw; champion judged on the same rows."""
    from ml.data import model_frame
    from ml.export import OnnxModel
    from ml.gates import evaluate_gates

    config = ctx.config
    trained = _step_result(ctx, "train")
    challenger_path = ctx.work_dir / "challenger" / "model.onnx"
    if not challenger_path.exists():
        challenger_path = _download_model(trained["model_uri"], ctx.work_dir / "challenger")
    challenger = OnnxModel.load(challenger_path, expected_sha256=trained["onnx_sha256"])
    frame, y, sklearn_proba = _holdout(ctx)
    features = model_frame(frame, config)
    challenger_proba = challenger.predict_proba(features)
    champion_version, champion, _ = _champion(ctx)
    champion_proba = champion.predict_proba(features) if champion is not None else None
    groups = frame[config.sensitive_feature] if config.sensitive_feature in frame.columns else None
    report = evaluate_gates(config, y=y, challenger_proba=challenger_proba, sklearn_proba=sklearn_proba,
                            champion_proba=champion_proba, champion_version=champion_version, groups=groups,
                            latency_p99_ms=challenger.single_row_latency_ms(features),
                            size_bytes=challenger.size_bytes)
    for name, gate in report.gates.items():
        if gate.value is not None:
            ctx.client.log_metric(ctx.mlflow_run_id, f"gate.{name}", gate.value)
    return {"attempt": _attempt(ctx), "champion_version": champion_version, **report.to_dict()}


def register(ctx: RunContext) -> dict[str, Any]:
    """Register the gated challenger (once per run) with lineage tags; move `challenger` to it."""
    from ml.registry import CHALLENGER, SHA_TAG, move_alias, register_version

    config = ctx.config
    gate_state = _current_step(ctx, "gates")
    if not gate_state or not gate_state.get("passed"):
        raise StateError("refusing to register: the gates of this attempt did not pass (or did not run)")
    trained = _step_result(ctx, "train")
    validation = ctx.require("validate")
    decision = _current_step(ctx, "decide") or {}
    drift_state = _current_step(ctx, "drift") or {}
    tags = {
        SHA_TAG: trained["onnx_sha256"], "ct.run_key": ctx.run_key, "ct.mlflow_run_id": ctx.mlflow_run_id,
        "ct.dag_id": validation.get("dag_id") or "", "ct.dag_run_id": validation.get("dag_run_id") or "",
        "ct.code_version": code_version(), "ct.estimator": trained["estimator"],
        "ct.reference_sha256": validation["reference_sha256"] or "",
        "ct.current_sha256": validation["current_sha256"] or "",
        "ct.reference_path": validation["reference_path"] or "", "ct.current_path": validation["current_path"] or "",
        "ct.eval_source": trained["eval_source"], "ct.decision_reason": decision.get("reason", "")[:4000],
        "ct.drift": json.dumps({"dataset_drift": drift_state.get("dataset_drift"),
                                "drifted_share": drift_state.get("drifted_share"),
                                "drifted": [k for k, v in drift_state.get("features", {}).items() if v["drifted"]]}),
    }
    tags |= {f"ct.metric.{k}": str(v) for k, v in trained["metrics"].items()}
    tags |= {f"ct.gate.{name}": json.dumps({k: g[k] for k in ("passed", "value", "threshold")})
             for name, g in gate_state["gates"].items()}
    version, created = register_version(ctx.client, config.name, trained["model_uri"], trained["model_id"],
                                        ctx.mlflow_run_id, tags)
    move = move_alias(ctx.client, config.name, CHALLENGER, str(version.version),
                      reason=f"passed gates in run {ctx.run_key}")
    return {"attempt": _attempt(ctx), "version": str(version.version), "created": created,
            "challenger_alias": move.to_dict()}


def deploy(ctx: RunContext, *, smoke: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Roll the registered version out to the configured target, smoke-tested on holdout rows."""
    from ml.deploy import rollout
    from ml.deploy.smoke import smoke_records

    registered = _step_result(ctx, "register")
    frame, _, _ = _holdout(ctx)
    records = smoke_records(frame, ctx.config, ctx.config.deploy.smoke_rows)
    result = rollout(ctx.config, registered["version"], records, smoke=smoke)
    return {"attempt": _attempt(ctx), **result.to_dict()}


def promote(ctx: RunContext) -> dict[str, Any]:
    """Move `champion` to the version now serving (only after a successful deploy)."""
    from ml.registry import CHAMPION, move_alias

    deployed = _step_result(ctx, "deploy", this_attempt=True)
    if deployed["status"] not in ("deployed", "unchanged"):
        raise StateError(f"refusing to promote v{deployed['version']}: deploy status is {deployed['status']}")
    decision = _current_step(ctx, "decide") or {}
    move = move_alias(ctx.client, ctx.config.name, CHAMPION, deployed["version"],
                      reason=f"run {ctx.run_key}: {decision.get('reason', 'promoted')}"[:4000])
    return {"attempt": _attempt(ctx), "version": deployed["version"], "previous": move.previous,
            "promoted": True, "move": move.to_dict()}


STEP_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "validate": validate, "drift": drift, "performance": performance, "decide": decide, "train": train,
    "gates": gates, "register": register, "deploy": deploy, "promote": promote,
}


def _outcome_error(step: str, result: dict[str, Any]) -> CTError | None:
    """The error that must stop the run after a step that *completed* with a failing outcome."""
    if step == "validate" and not result["passed"]:
        return ContractError("data contract failed: " + "; ".join(result["problems"]), result["problems"])
    if step == "gates" and not result["passed"]:
        details = "; ".join(f"{n}: {result['gates'][n]['detail']}" for n in result["failed"])
        return GatesFailed(f"challenger rejected, gate(s) failed: {', '.join(result['failed'])} ({details})")
    if step == "deploy" and result["status"] not in ("deployed", "unchanged"):
        return DeployError(f"deploy {result['status']}: {result['detail']}")
    return None


def execute(step: str, ctx: RunContext, **kwargs: Any) -> dict[str, Any]:
    """Run one step, store its result (or error) in the run state, raise if the run must stop."""
    if step not in STEP_FUNCTIONS:
        raise ValueError(f"unknown step '{step}'; steps: {list(STEP_FUNCTIONS)}")
    log.info("step %s (run %s)", step, ctx.run_key)
    try:
        result = STEP_FUNCTIONS[step](ctx, **kwargs)
    except Exception as exc:
        attempt = (ctx.load("validate") or {}).get("attempt") if step != "validate" else None
        ctx.save(step, {"attempt": attempt, "error": str(exc), "error_type": type(exc).__name__})
        raise
    ctx.save(step, result)
    error = _outcome_error(step, result)
    if error is not None:
        raise error
    return result


def run_pipeline(config: ModelConfig, run_key: str, *, force_retrain: bool = False, dag_id: str | None = None,
                 dag_run_id: str | None = None, smoke: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The whole pipeline in this process; always ends with the run record (returned)."""
    from ml.record import finish_run
    from ml.tracking import open_run

    ctx = open_run(config, run_key, tags={"ct.dag_run_id": dag_run_id or ""} if dag_run_id else None)
    try:
        execute("validate", ctx, dag_id=dag_id, dag_run_id=dag_run_id)
        execute("drift", ctx)
        execute("performance", ctx)
        if execute("decide", ctx, force_retrain=force_retrain)["decision"] == "retrain":
            for step in RETRAIN_STEPS:
                execute(step, ctx, **({"smoke": smoke} if step == "deploy" and smoke else {}))
    except CTError as exc:
        log.error("%s", exc)
    except Exception:
        log.exception("step failed unexpectedly; writing the run record")
    return finish_run(ctx)

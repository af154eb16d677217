"""Training the challenger: a scikit-learn Pipeline (ColumnTransformer + estimator) and its ONNX twin.

Which data: the reference window plus the labelled part of the current window, minus an evaluation
holdout. The holdout is drawn from the newest labelled data (the current window) when it has at least
`performance.min_labelled_rows` labels, otherwise from the reference; the gates judge challenger and
champion on exactly these rows. `training.current_weight` up-weights current rows.

Window "current" leaves the reference rows out of training (concept drift: their labels follow the
old relationship). This module holds the building blocks and the fit of a named estimator; ml.search
searches one (`model.estimator: auto`) and ml.challenger chooses between them and between windows.

Tree ensembles are bounded from the data (ml.estimators) and estimated early: a tenth of the
trees is fitted on all training rows and exported, and a model whose projected ONNX size or latency
would fail its gate is not trained to the end.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ml.data import class_labels, encode_target, labelled, model_frame, stacked_model_frame, take_rows
from ml.errors import TrainingError
from ml.estimate import Calibration
from ml.result import Result

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from ml.config import ModelConfig
    from ml.export import ExportMeasure
    from ml.gates import GateResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    x_train: pd.DataFrame
    y_train: np.ndarray
    weights: np.ndarray
    eval_frame: pd.DataFrame  # raw rows (all columns) of the holdout, for gates and smoke tests
    y_eval: np.ndarray
    eval_source: str  # "current" or "reference"
    classes: list[str]
    #: cross-fitting (a holdout of fewer than training.min_holdout_rows): every row of the holdout source is
    #: a holdout row AND a training row; eval_folds gives each holdout row its fold, train_folds each training
    #: row its fold (-1: in every fit), and a holdout row is scored by the fit that left its fold out
    eval_folds: np.ndarray | None = None
    train_folds: np.ndarray | None = None

    @property
    def folds(self) -> int:
        """How many folds the holdout was cross-fitted with (0: a held-out split)."""
        return 0 if self.eval_folds is None else int(self.eval_folds.max()) + 1


@dataclass(frozen=True)
class Challenger:
    """The fitted pipeline and what the rest of the run needs to know about it."""

    pipeline: Any
    data: TrainingData
    eval_proba: np.ndarray  # the fitted pipeline's probabilities on the holdout rows (what ONNX must match)
    metrics: dict[str, float]  # on scored_proba
    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    window: str = "all"
    candidates: dict[str, float] = field(default_factory=dict)  # window -> holdout metric, when several
    onnx: bytes | None = None  # already exported and checked (model.estimator auto)
    search: SearchReport | None = None
    #: cross-fitting: each holdout row's probabilities from the fit without its fold (what is judged)
    cross_fitted_proba: np.ndarray | None = None

    @property
    def scored_proba(self) -> np.ndarray:
        """The probabilities the holdout metrics and the gates judge: of rows the model did not learn from."""
        return self.eval_proba if self.cross_fitted_proba is None else self.cross_fitted_proba

    @property
    def holdout(self) -> Holdout:
        return Holdout(frame=self.data.eval_frame, y=self.data.y_eval, sklearn_proba=self.eval_proba,
                       cross_fitted_proba=self.cross_fitted_proba)


Status = Literal["chosen", "scored", "excluded", "skipped", "failed"]


@dataclass(frozen=True)
class CandidateResult(Result):
    """One candidate of the search: what it is, how it scored, and what became of it."""

    name: str  # <estimator>_<setting number>
    estimator: str
    setting: dict[str, Any]  # the grid setting
    #: chosen | scored (cross-validated, a better one was chosen) | excluded (cannot be served, see reason)
    #: | skipped (not tried: budget spent) | failed (training raised)
    status: Status
    reason: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # as fitted on all training rows (bounds applied)
    cv_score: float | None = None  # mean over folds
    cv_std: float | None = None
    cv_seconds: float | None = None  # the early estimate, fitting and scoring every fold
    refit_seconds: float | None = None  # the fit on all training rows and the export checks
    onnx_mb: float | None = None
    latency_p99_ms: float | None = None
    parity: float | None = None


@dataclass(frozen=True)
class SearchReport(Result):
    """The search: its settings, time spent, the chosen candidate and every candidate in search order."""

    metric: str
    cv_folds: int
    cv_rows: int
    budget_s: float
    elapsed_s: float
    chosen: str | None
    candidates: list[CandidateResult]

    @property
    def chosen_setting(self) -> dict[str, Any]:
        """The chosen candidate's grid setting: what other windows are fitted with (bounded for their rows)."""
        return next(dict(c.setting) for c in self.candidates if c.name == self.chosen)


@dataclass(frozen=True)
class TrainResult(Result):
    """The train step's result: the logged challenger and how it was trained."""

    summary_fields = ("model_id", "model_uri", "onnx_sha256", "estimator", "train_rows", "eval_rows",
                      "eval_source", "eval_folds", "metrics")

    model_id: str
    model_uri: str
    onnx_sha256: str
    onnx_size_bytes: int
    estimator: str
    train_rows: int
    eval_rows: int
    eval_source: str
    metrics: dict[str, float]
    classes: list[str]
    window: str = "all"
    #: >= 2: the holdout was too small to hold out (training.min_holdout_rows) and was cross-fitted instead
    eval_folds: int = 0
    candidates: dict[str, float] = field(default_factory=dict)
    #: the estimator's parameters as fitted: its defaults, model.params, the bounds of ml.estimators
    params: dict[str, Any] = field(default_factory=dict)
    #: model.estimator auto: every candidate, its cross-validated score, time and fate
    search: SearchReport | None = None
    #: the isotonic map from its probability to the observed frequency on the holdout (binary models), which the
    #: register step tags the version with for the label-free estimate of later runs (ml.estimate)
    calibration: Calibration | None = None


#: The holdout the gates judge on and the deploy smoke-tests with, as the train step stores it in the run.
HOLDOUT_ARTIFACT = "challenger/holdout.parquet"
_LABEL_COLUMN = "__ct_y"
_PROBA_PREFIX = "__ct_sklearn_p"
_CROSS_FITTED_PREFIX = "__ct_cross_fitted_p"


@dataclass(frozen=True)
class Holdout:
    """Raw holdout rows (every column), their class indices and the fitted pipeline's probabilities; when
    the holdout was cross-fitted, also each row's probabilities from the fit that left its fold out."""

    frame: pd.DataFrame
    y: np.ndarray
    sklearn_proba: np.ndarray
    cross_fitted_proba: np.ndarray | None = None

    def judged(self, served_proba: np.ndarray) -> np.ndarray:
        """What the gates judge: the cross-fitted probabilities, else the served model's own on these rows."""
        return served_proba if self.cross_fitted_proba is None else self.cross_fitted_proba

    def write(self, path: Path) -> None:
        """One Parquet file: the rows, plus the label and the probabilities under reserved column names."""
        table = self.frame.copy()
        table[_LABEL_COLUMN] = self.y
        for prefix, proba in ((_PROBA_PREFIX, self.sklearn_proba), (_CROSS_FITTED_PREFIX, self.cross_fitted_proba)):
            for i in range(0 if proba is None else proba.shape[1]):
                table[f"{prefix}{i}"] = proba[:, i]
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(path, index=False)

    @classmethod
    def of_run(cls, run_id: str) -> Holdout:
        """The holdout a training run stored (cached under $CT_HOME/cache/holdouts: a run's holdout never
        changes). Raises what MLflow raises when the run has none."""
        from ml.tracking import ct_home, download_run_artifact

        cached = ct_home() / "cache" / "holdouts" / f"{run_id}.parquet"
        if not cached.exists():
            download_run_artifact(run_id, HOLDOUT_ARTIFACT, cached)
        return cls.read(cached)

    @classmethod
    def read(cls, path: Path) -> Holdout:
        import pandas as pd

        table = pd.read_parquet(path)

        def columns(prefix: str) -> list[str]:
            return sorted((c for c in table.columns if c.startswith(prefix)), key=lambda c: int(c[len(prefix):]))

        proba, cross_fitted = columns(_PROBA_PREFIX), columns(_CROSS_FITTED_PREFIX)
        return cls(frame=table.drop(columns=[*proba, *cross_fitted, _LABEL_COLUMN]),
                   y=table[_LABEL_COLUMN].to_numpy(), sklearn_proba=table[proba].to_numpy(),
                   cross_fitted_proba=table[cross_fitted].to_numpy() if cross_fitted else None)


#: The share of gates.max_size_mb the bounds of ml.estimators give a tree ensemble: the file stays small
#: and its conversion quick, and the exact size still has room above the estimate.
TREE_SIZE_SHARE = 0.25
#: Ensembles of at least this many trees are estimated early from a tenth of them.
PROBE_MIN_TREES = 20
_PROBE_ROWS = 200


def build_pipeline(config: ModelConfig, estimator: str | None = None, params: dict[str, Any] | None = None) -> Any:
    """Unfitted Pipeline: median-impute (+ scale, for estimators that want it) numerics, one-hot
    categoricals, then the estimator (default: the config's, with model.params as given). Fitted on the
    float32 training frame (ml.data.stacked_model_frame), it builds float32 matrices throughout."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from ml.estimators import build_estimator, wants_scaling
    from ml.preprocessing import ChunkedScaler, MedianImputer

    name = estimator or config.model.estimator
    steps = []
    if config.features.numeric:
        numeric_steps = [("impute", MedianImputer(strategy="median"))]
        if wants_scaling(name):
            numeric_steps.append(("scale", ChunkedScaler()))
        numeric = Pipeline(numeric_steps)
        steps.append(("numeric", numeric, list(config.features.numeric)))
    if config.features.categorical:
        encoder = OneHotEncoder(handle_unknown="ignore", dtype=np.float32)
        steps.append(("categorical", encoder, list(config.features.categorical)))
    classifier = build_estimator(name, config.model.params if params is None else params, config.training.seed)
    return Pipeline([("features", ColumnTransformer(steps)), ("classifier", classifier)])


def with_estimator(config: ModelConfig, estimator: str, params: dict[str, Any]) -> ModelConfig:
    """A copy of the config naming `estimator` and `params` (what auto chose), search settings dropped."""
    from ml.config import ModelSpec

    spec = ModelSpec(estimator=estimator, params=params, threshold=config.model.threshold)
    return config.model_copy(update={"model": spec})


def bounded_params(config: ModelConfig, estimator: str, params: dict[str, Any], rows: int,
                   classes: int) -> dict[str, Any]:
    """The parameters `estimator` is fitted with on `rows` rows (ml.estimators.effective_params)."""
    from ml.estimators import FitContext, effective_params

    budget = config.gates.max_size_mb * 1e6 * TREE_SIZE_SHARE
    return effective_params(estimator, params, FitContext(rows=rows, classes=classes, max_onnx_bytes=budget))


def fit_pipeline(config: ModelConfig, estimator: str, params: dict[str, Any], x: pd.DataFrame, y: np.ndarray,
                 weights: np.ndarray, classes: int) -> tuple[Any, dict[str, Any]]:
    """The fitted pipeline of `estimator` (bounded for these rows) and the parameters it was fitted with."""
    fitted_params = bounded_params(config, estimator, params, len(x), classes)
    try:
        pipeline = build_pipeline(config, estimator, fitted_params)
    except (ImportError, OSError) as exc:  # e.g. lightgbm without its OpenMP runtime (libgomp1)
        raise TrainingError(f"{estimator} cannot be loaded: {type(exc).__name__}: {exc}") from None
    try:
        pipeline.fit(x, y, classifier__sample_weight=weights)
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"training {estimator} failed: {exc}") from None
    return pipeline, fitted_params


def serving_gates(config: ModelConfig, measured: ExportMeasure, sklearn_proba: np.ndarray) -> dict[str, GateResult]:
    """The gates step's parity, latency (p99) and size gates on a measured export."""
    from ml.gates import latency_gate, parity_gate, size_gate

    gates = config.gates
    return {"onnx_parity": parity_gate(sklearn_proba, measured.onnx_proba, gates.parity_tolerance),
            "latency": latency_gate(measured.latency_p99_ms, gates.max_latency_ms),
            "size": size_gate(measured.size_bytes, gates.max_size_mb)}


def projected_gates(config: ModelConfig, measured: ExportMeasure, scale: float) -> dict[str, GateResult]:
    """The latency and size gates of a model `scale` times the measured one's trees: both grow linearly in
    the trees. Latency projects the median, not the p99: a scheduler hiccup in a p99 of a few trees,
    multiplied by `scale`, would refuse any model on a busy machine; the gates step still judges the p99."""
    from ml.gates import latency_gate, size_gate

    gates = config.gates
    latency = latency_gate(measured.latency_p50_ms * scale, gates.max_latency_ms)
    latency = dataclasses.replace(latency, detail="median single-row onnxruntime latency (ms) x trees")
    return {"latency": latency, "size": size_gate(round(measured.size_bytes * scale), gates.max_size_mb)}


def failed_gates(gates: dict[str, GateResult], projected: bool = False) -> str | None:
    """One line naming the gates that failed (None when all passed)."""
    failed = [f"{name} {'projected ' if projected else ''}{g.value:.4g} > {g.threshold:g} ({g.detail})"
              if g.value is not None else f"{name} ({g.detail})" for name, g in gates.items() if not g.passed]
    return "; ".join(failed) or None


def early_estimate(config: ModelConfig, estimator: str, params: dict[str, Any],
                   data: TrainingData) -> str | None:
    """Why `estimator` would fail the size or latency gate, projected from a tenth of its trees fitted on all
    training rows and exported (None: it would pass, or it is no ensemble large enough to estimate)."""
    fitted = bounded_params(config, estimator, params, len(data.x_train), len(data.classes))
    trees = fitted.get("n_estimators")
    if not isinstance(trees, int) or trees < PROBE_MIN_TREES:
        return None
    from ml.export import measure_export

    probe_trees = max(1, trees // 10)
    pipeline, _ = fit_pipeline(config, estimator, {**fitted, "n_estimators": probe_trees}, data.x_train,
                               data.y_train, data.weights, len(data.classes))
    frame = model_frame(data.eval_frame.head(_PROBE_ROWS), config)
    measured = measure_export(pipeline, with_estimator(config, estimator, fitted), data.classes, frame)
    problem = failed_gates(projected_gates(config, measured, trees / probe_trees), projected=True)
    log.info("%s: %d of %d trees export to %.3f MB, median latency %.3f ms%s", estimator, probe_trees, trees,
             measured.size_bytes / 1e6, measured.latency_p50_ms, f": {problem}" if problem else "")
    return f"from {probe_trees} of {trees} trees: {problem}" if problem else None


def scored_challenger(config: ModelConfig, pipeline: Any, data: TrainingData, estimator: str,
                      params: dict[str, Any], window: str, **extra: Any) -> Challenger:
    """The fitted pipeline scored on the holdout, as a Challenger."""
    from ml.metrics import all_scores

    proba = pipeline.predict_proba(model_frame(data.eval_frame, config))
    cross_fitted = cross_fitted_proba(config, estimator, params, data) if data.folds else None
    metrics = all_scores(data.y_eval, proba if cross_fitted is None else cross_fitted, config.model.threshold)
    log.info("challenger %s (%s window) %s metrics: %s", estimator, window,
             f"{data.folds}-fold cross-fitted" if data.folds else "holdout",
             {k: round(v, 4) for k, v in metrics.items()})
    return Challenger(pipeline=pipeline, data=data, eval_proba=proba, metrics=metrics, estimator=estimator,
                      params=params, window=window, cross_fitted_proba=cross_fitted, **extra)


def cross_fitted_proba(config: ModelConfig, estimator: str, params: dict[str, Any], data: TrainingData) -> np.ndarray:
    """Every holdout row scored by `estimator` (the same parameters) fitted without the row's fold."""
    import numpy as np

    assert data.eval_folds is not None and data.train_folds is not None
    features = model_frame(data.eval_frame, config)
    proba = np.zeros((len(features), len(data.classes)))
    for fold in range(data.folds):
        keep = data.train_folds != fold
        pipeline, _ = fit_pipeline(config, estimator, params, data.x_train[keep], data.y_train[keep],
                                   data.weights[keep], len(data.classes))
        rows = np.flatnonzero(data.eval_folds == fold)
        # a fold may leave a rare class out of its fit: its column stays 0 for these rows
        proba[np.ix_(rows, pipeline.classes_)] = pipeline.predict_proba(features.iloc[rows])
    return proba


def split_training_data(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None,
                        current_only: bool = False) -> TrainingData:
    """Deterministic train/holdout split (seeded, stratified); cross-fitted folds instead when the holdout
    would have fewer than training.min_holdout_rows rows. The windows are not copied: the training rows are
    taken from them straight into the model frame, the holdout's raw rows alone are copied."""
    import numpy as np

    classes = class_labels(config, reference)
    cur = labelled(current, config) if current is not None else reference.iloc[0:0]
    weight = config.training.current_weight
    if len(cur) >= config.performance.min_labelled_rows:
        source, split, rest = "current", cur, (reference.iloc[0:0] if current_only else reference)
    else:
        source, split, rest = "reference", reference, cur
    y_split = encode_target(split[config.target], config, classes)
    train_rows, holdout_rows, folds = _split(config, y_split)
    y_rest = encode_target(rest[config.target], config, classes) if len(rest) else np.empty(0, dtype=np.int64)
    # the order of old: the reference's rows, then the current window's
    split_part = (split, train_rows, y_split[train_rows], weight if source == "current" else 1.0, folds)
    rest_part = (rest, None, y_rest, 1.0 if source == "current" else weight, None)
    parts = [rest_part, split_part] if source == "current" else [split_part, rest_part]
    y_train = np.concatenate([y for _, _, y, _, _ in parts])
    if len(np.unique(y_train)) < 2:
        raise TrainingError(f"training data has a single class of '{config.target}': nothing to learn")
    weights = np.concatenate([np.full(len(y), w) for _, _, y, w, _ in parts])
    train_folds = None if folds is None else np.concatenate(
        [np.full(len(y), -1) if f is None else f for _, _, y, _, f in parts])
    return TrainingData(x_train=stacked_model_frame([(frame, rows) for frame, rows, _, _, _ in parts], config),
                        y_train=y_train, weights=weights,
                        eval_frame=take_rows(split, holdout_rows), y_eval=y_split[holdout_rows],
                        eval_source=source, classes=classes, eval_folds=folds, train_folds=train_folds)


def _split(config: ModelConfig, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(training rows, holdout rows, None) of a seeded stratified split of rows with labels `y`, as positions;
    or, when the holdout would be smaller than training.min_holdout_rows, (every row, every row, each row's
    fold) for cross-fitting."""
    import math

    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    training = config.training
    rows = np.arange(len(y))
    smallest = np.bincount(y).min(initial=len(y))
    if math.ceil(training.eval_fraction * len(y)) >= training.min_holdout_rows or len(y) < 2 * training.folds:
        stratify = y if smallest >= 2 else None
        train, holdout = train_test_split(rows, test_size=training.eval_fraction, random_state=training.seed,
                                          stratify=stratify)
        return train, holdout, None
    kind = StratifiedKFold if smallest >= training.folds else KFold
    folds = np.empty(len(y), dtype=int)
    splitter = kind(n_splits=training.folds, shuffle=True, random_state=training.seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(y)), y)):
        folds[held] = fold
    log.info("%d rows give a holdout below training.min_holdout_rows (%d): %d-fold cross-fitting on all of them",
             len(y), training.min_holdout_rows, training.folds)
    return rows, rows, folds


def fit_named(config: ModelConfig, data: TrainingData, window: str = "all") -> Challenger:
    """Fit the named estimator (model.estimator, model.params) on the training rows; score it on the holdout."""
    name = config.model.estimator
    log.info("training %s on %d rows (%d classes), holdout %d rows from the %s window",
             name, len(data.x_train), len(data.classes), len(data.eval_frame), data.eval_source)
    problem = early_estimate(config, name, config.model.params, data)
    if problem:
        raise TrainingError(f"{name} would fail the serving gates ({problem}): not training it to the end; "
                            "lower model.params n_estimators or max_leaf_nodes, or raise the gates' budgets")
    pipeline, params = fit_pipeline(config, name, config.model.params, data.x_train, data.y_train, data.weights,
                                    len(data.classes))
    return scored_challenger(config, pipeline, data, name, params, window)


def export_checked(config: ModelConfig, challenger: Challenger) -> tuple[Challenger, dict[str, GateResult]]:
    """The challenger with its ONNX file and its serving gates (parity on the holdout, latency, size);
    TrainingError naming the problem when it does not convert or fails one of them."""
    from ml.export import measure_export

    resolved = with_estimator(config, challenger.estimator, challenger.params)
    measured = measure_export(challenger.pipeline, resolved, challenger.data.classes,
                              model_frame(challenger.data.eval_frame, config))
    gates = serving_gates(config, measured, challenger.eval_proba)
    problem = failed_gates(gates)
    if problem:
        raise TrainingError(problem)
    return dataclasses.replace(challenger, onnx=measured.onnx), gates


def checked(config: ModelConfig, challenger: Challenger) -> Challenger | None:
    """The challenger with its ONNX file when it passes the serving gates; else None (logged)."""
    try:
        return export_checked(config, challenger)[0]
    except TrainingError as exc:
        log.warning("%s window: %s cannot be served: %s", challenger.window, challenger.estimator, exc)
        return None

"""Training the challenger: a scikit-learn Pipeline (ColumnTransformer + estimator) and its ONNX twin.

Which data: the reference window plus the labelled part of the current window, minus an evaluation
holdout. The holdout is drawn from the newest labelled data (the current window) when it has at least
`performance.min_labelled_rows` labels, otherwise from the reference; the gates judge challenger and
champion on exactly these rows. `training.current_weight` up-weights current rows.

Window "current" leaves the reference rows out of training (concept drift: their labels follow the
old relationship). `fit_best_challenger` fits several windows and keeps the best on the shared
holdout: a decayed metric alone cannot tell concept drift from a population shift whose P(y|x) is
unchanged, so `training.window: auto` lets the holdout decide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ml.data import class_labels, encode_target, labelled, model_frame
from ml.errors import TrainingError
from ml.result import Result

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from ml.config import ModelConfig

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


@dataclass(frozen=True)
class Challenger:
    """The fitted pipeline and what the rest of the run needs to know about it."""

    pipeline: Any
    data: TrainingData
    eval_proba: np.ndarray
    metrics: dict[str, float]
    estimator: str
    params: dict[str, Any] = field(default_factory=dict)
    window: str = "all"
    candidates: dict[str, float] = field(default_factory=dict)  # window -> holdout metric, when several

    @property
    def holdout(self) -> Holdout:
        return Holdout(frame=self.data.eval_frame, y=self.data.y_eval, sklearn_proba=self.eval_proba)


@dataclass(frozen=True)
class TrainResult(Result):
    """The train step's result: the logged challenger and how it was trained."""

    summary_fields = ("model_id", "model_uri", "onnx_sha256", "estimator", "train_rows", "eval_rows",
                      "eval_source", "metrics")

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
    candidates: dict[str, float] = field(default_factory=dict)


#: The holdout the gates judge on and the deploy smoke-tests with, as the train step stores it in the run.
HOLDOUT_ARTIFACT = "challenger/holdout.parquet"
_LABEL_COLUMN = "__ct_y"
_PROBA_PREFIX = "__ct_sklearn_p"


@dataclass(frozen=True)
class Holdout:
    """Raw holdout rows (every column), their class indices and the fitted pipeline's probabilities."""

    frame: pd.DataFrame
    y: np.ndarray
    sklearn_proba: np.ndarray

    def write(self, path: Path) -> None:
        """One Parquet file: the rows, plus the label and the probabilities under reserved column names."""
        table = self.frame.copy()
        table[_LABEL_COLUMN] = self.y
        for i in range(self.sklearn_proba.shape[1]):
            table[f"{_PROBA_PREFIX}{i}"] = self.sklearn_proba[:, i]
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(path, index=False)

    @classmethod
    def read(cls, path: Path) -> Holdout:
        import pandas as pd

        table = pd.read_parquet(path)
        proba = sorted((c for c in table.columns if c.startswith(_PROBA_PREFIX)),
                       key=lambda c: int(c[len(_PROBA_PREFIX):]))
        return cls(frame=table.drop(columns=[*proba, _LABEL_COLUMN]), y=table[_LABEL_COLUMN].to_numpy(),
                   sklearn_proba=table[proba].to_numpy())


def build_pipeline(config: ModelConfig) -> Any:
    """Unfitted Pipeline: median-impute (+ scale, for estimators that want it) numerics, one-hot
    categoricals, then the estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from ml.estimators import build_estimator, wants_scaling

    steps = []
    if config.features.numeric:
        numeric_steps = [("impute", SimpleImputer(strategy="median"))]
        if wants_scaling(config.model.estimator):
            numeric_steps.append(("scale", StandardScaler()))
        numeric = Pipeline(numeric_steps)
        steps.append(("numeric", numeric, list(config.features.numeric)))
    if config.features.categorical:
        steps.append(("categorical", OneHotEncoder(handle_unknown="ignore"), list(config.features.categorical)))
    estimator = build_estimator(config.model.estimator, config.model.params, config.training.seed)
    return Pipeline([("features", ColumnTransformer(steps)), ("classifier", estimator)])


def split_training_data(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None,
                        current_only: bool = False) -> TrainingData:
    """Deterministic train/holdout split (seeded, stratified)."""
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split

    seed, fraction = config.training.seed, config.training.eval_fraction
    classes = class_labels(config, reference)
    ref = reference.reset_index(drop=True)
    cur = labelled(current, config).reset_index(drop=True) if current is not None else ref.iloc[0:0]

    def split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        y = encode_target(frame[config.target], config, classes)
        stratify = y if np.bincount(y).min(initial=len(y)) >= 2 else None
        return train_test_split(frame, test_size=fraction, random_state=seed, stratify=stratify)

    if len(cur) >= config.performance.min_labelled_rows:
        cur_train, holdout = split(cur)
        if current_only:
            ref = ref.iloc[0:0]
        train = pd.concat([ref, cur_train], ignore_index=True)
        weights = np.concatenate([np.ones(len(ref)), np.full(len(cur_train), config.training.current_weight)])
        source = "current"
    else:
        ref_train, holdout = split(ref)
        train = pd.concat([ref_train, cur], ignore_index=True)
        weights = np.concatenate([np.ones(len(ref_train)), np.full(len(cur), config.training.current_weight)])
        source = "reference"
    y_train = encode_target(train[config.target], config, classes)
    if len(np.unique(y_train)) < 2:
        raise TrainingError(f"training data has a single class of '{config.target}': nothing to learn")
    return TrainingData(x_train=model_frame(train, config), y_train=y_train, weights=weights,
                        eval_frame=holdout.reset_index(drop=True),
                        y_eval=encode_target(holdout[config.target], config, classes),
                        eval_source=source, classes=classes)


def fit_challenger(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None,
                   window: str = "all") -> Challenger:
    """Fit the configured pipeline on a window ("all" or "current") and score it on the holdout."""
    from ml.metrics import all_scores

    data = split_training_data(config, reference, current, current_only=window == "current")
    pipeline = build_pipeline(config)
    log.info("training %s on %d rows (%d classes), holdout %d rows from the %s window",
             config.model.estimator, len(data.x_train), len(data.classes), len(data.eval_frame), data.eval_source)
    try:
        pipeline.fit(data.x_train, data.y_train, classifier__sample_weight=data.weights)
    except (ValueError, TypeError) as exc:
        raise TrainingError(f"training {config.model.estimator} failed: {exc}") from None
    proba = pipeline.predict_proba(model_frame(data.eval_frame, config))
    metrics = all_scores(data.y_eval, proba, config.model.threshold)
    log.info("challenger holdout metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
    return Challenger(pipeline=pipeline, data=data, eval_proba=proba, metrics=metrics,
                      estimator=config.model.estimator, params=dict(config.model.params), window=window)


def fit_best_challenger(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None,
                        windows: list[str]) -> Challenger:
    """Fit one challenger per window and keep the best by `performance.metric` on the shared holdout."""
    import dataclasses
    import math

    from ml.metrics import HIGHER_IS_BETTER

    metric = config.performance.metric
    fitted = [fit_challenger(config, reference, current, w) for w in windows]
    if len(fitted) == 1:
        return fitted[0]
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    best = max(fitted, key=lambda c: -math.inf if math.isnan(c.metrics[metric]) else sign * c.metrics[metric])
    scores = {c.window: c.metrics[metric] for c in fitted}
    log.info("training windows by holdout %s: %s -> keeping '%s'", metric, scores, best.window)
    return dataclasses.replace(best, candidates=scores)

"""The challenger of a run: the configured estimator, or the one the search chose (model.estimator auto),
on the training window `training.window` asks for.

`fit_best_challenger` fits several windows and keeps the best on the shared holdout: a decayed metric
alone cannot tell concept drift from a population shift whose P(y|x) is unchanged, so `training.window:
auto` lets the holdout decide. `model.estimator: auto` searches candidates (ml.search) once, on the first
window's training rows; the other windows are fitted with the chosen estimator and parameters and must
pass the same export checks.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig
    from ml.train import Challenger, TrainingData

log = logging.getLogger(__name__)


def fit_challenger(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None,
                   window: str = "all") -> Challenger:
    """Fit the configured estimator (or search one: model.estimator auto) on a window ("all" or "current")
    and score it on the holdout."""
    from ml.train import split_training_data

    return fit_on(config, split_training_data(config, reference, current, current_only=window == "current"), window)


def fit_on(config: ModelConfig, data: TrainingData, window: str = "all") -> Challenger:
    """Fit the configured estimator (or search one: model.estimator auto) on a window's training data."""
    from ml.estimators import AUTO
    from ml.search import search_challenger
    from ml.train import fit_named

    if config.model.estimator == AUTO:
        return search_challenger(config, data, window)
    return fit_named(config, data, window)


def split_windows(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None,
                  windows: list[str]) -> dict[str, TrainingData]:
    """Each training window's data (ml.train.split_training_data), split before anything is fitted: the caller
    can let the raw windows go before the fits."""
    from ml.train import split_training_data

    return {w: split_training_data(config, reference, current, current_only=w == "current") for w in windows}


def fit_best_challenger(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None,
                        windows: list[str]) -> Challenger:
    """`fit_best_of` the windows' training data."""
    return fit_best_of(config, split_windows(config, reference, current, windows))


def fit_best_of(config: ModelConfig, splits: dict[str, TrainingData]) -> Challenger:
    """Fit one challenger per window (`split_windows`) and keep the best by `performance.metric` on the shared
    holdout.

    With model.estimator auto the search runs on the first window; the others are fitted with what it chose
    and kept only if they pass the same export checks."""
    import math

    from ml.metrics import HIGHER_IS_BETTER
    from ml.train import checked, with_estimator

    metric = config.performance.metric
    windows = list(splits)
    first = fit_on(config, splits[windows[0]], windows[0])
    if len(windows) == 1:
        return first
    if first.search is None:
        fitted = eligible = [first, *(fit_on(config, splits[w], w) for w in windows[1:])]
    else:
        spec = with_estimator(config, first.estimator, first.search.chosen_setting)
        others = [fit_on(spec, splits[w], w) for w in windows[1:]]
        fitted = [first, *others]
        eligible = [first, *filter(None, (checked(config, c) for c in others))]
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    best = max(eligible, key=lambda c: -math.inf if math.isnan(c.metrics[metric]) else sign * c.metrics[metric])
    scores = {c.window: c.metrics[metric] for c in fitted}
    log.info("training windows by holdout %s: %s -> keeping '%s'", metric, scores, best.window)
    return dataclasses.replace(best, candidates=scores, search=first.search)

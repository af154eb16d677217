"""The label-free performance estimate (ml.estimate) against the realised metric on labelled windows of a
generated binary task: close under covariate shift, blind (by design) to a changed concept."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ml.estimate import Calibration, calibration_from_tags, calibration_tag, estimate_metric, fit_calibration
from ml.metrics import score


def draw(rng, n: int, mean: float = 0.0, flip: bool = False):
    x = rng.normal(mean, 1, (n, 3))
    logit = 1.5 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(logit if flip else -logit))).astype(int)
    return x, y


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x, y = draw(rng, 6000)
    fitted = LogisticRegression().fit(x, y)
    xh, yh = draw(rng, 2000)
    return fitted, fit_calibration(yh, fitted.predict_proba(xh)), rng


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy", "f1", "balanced_accuracy", "log_loss"])
@pytest.mark.parametrize("mean", [0.0, 0.8, -0.8])
def test_the_estimate_follows_the_realised_metric_under_covariate_shift(model, metric, mean):
    fitted, calibration, rng = model
    x, y = draw(rng, 4000, mean)
    proba = fitted.predict_proba(x)
    tolerance = 0.05 if metric == "log_loss" else 0.03  # the log loss is the most sensitive to calibration
    assert estimate_metric(metric, proba, calibration) == pytest.approx(score(metric, y, proba), abs=tolerance)


def test_a_changed_concept_is_invisible_to_it(model):
    fitted, calibration, rng = model
    x, y = draw(rng, 4000, flip=True)
    proba = fitted.predict_proba(x)
    assert score("roc_auc", y, proba) < 0.3 < 0.7 < estimate_metric("roc_auc", proba, calibration)


def test_calibration_is_monotone_small_and_round_trips_through_a_tag():
    rng = np.random.default_rng(1)
    p = rng.random(5000)
    y = (rng.random(5000) < p**2).astype(int)  # overconfident scores: the map bends them down
    calibration = fit_calibration(y, np.column_stack([1 - p, p]))
    assert len(calibration.x) <= 100 and np.all(np.diff(calibration.y) >= 0)
    assert calibration.apply(np.array([0.5]))[0] == pytest.approx(0.25, abs=0.05)
    tag = calibration_tag(calibration)
    assert len(tag["ct.calibration"]) < 5000  # MLflow's tag limit
    assert calibration_from_tags(tag) == calibration and calibration_from_tags({}) is None


def test_what_cannot_be_estimated_is_none():
    three = np.full((10, 3), 1 / 3)
    assert estimate_metric("roc_auc", three, None) is None  # multiclass
    assert estimate_metric("average_precision", np.column_stack([np.ones(5) * 0.5] * 2), None) is None
    assert estimate_metric("roc_auc", np.empty((0, 2)), Calibration([0, 1], [0, 1])) is None
    assert fit_calibration(np.zeros(10, dtype=int), np.column_stack([np.ones(10) * 0.5] * 2)) is None


def test_labels_that_stop_following_the_probabilities_are_caught_where_the_auc_is_not():
    """A moved decision boundary (SEA's kind of concept change) keeps the ranking, so ROC AUC barely
    moves, but the labels no longer follow the champion's probabilities."""
    from ml.decision import assess_performance
    from ml.estimate import calibration_test

    rng = np.random.default_rng(5)
    s = rng.uniform(0, 20, 6000)
    p = 1 / (1 + np.exp(3 * (s - 8)))  # the champion: P(y=1) = P(s <= 8)
    proba = np.column_stack([1 - p, p])
    calibration = fit_calibration((rng.random(6000) < p).astype(int), proba)
    same = (rng.random(6000) < p).astype(int)
    moved = (rng.random(6000) < 1 / (1 + np.exp(3 * (s - 9.5)))).astype(int)  # boundary at 9.5
    p_same, gap_same = calibration_test(same, proba, calibration)
    p_moved, gap_moved = calibration_test(moved, proba, calibration)
    assert p_same > 0.01 and gap_same < 0.03
    assert p_moved < 1e-6 and gap_moved > 0.05
    assert abs(score("roc_auc", moved, proba) - score("roc_auc", same, proba)) < 0.05
    result = assess_performance("roc_auc", "1", 0.95, score("roc_auc", moved, proba), 6000, 100, 0.05,
                                calibration=(p_moved, gap_moved))
    assert result.decayed and result.miscalibrated and "no longer follow its probabilities" in result.detail
    assert not assess_performance("roc_auc", "1", 0.95, 0.95, 6000, 100, 0.05,
                                  calibration=(p_same, gap_same)).decayed

"""A label-free estimate of the champion's performance on the current window (confidence-based, in the
spirit of NannyML's CBPE).

If a binary model's probabilities are calibrated, each prediction says how likely it is to be right, so
the expected confusion matrix of a window, and any metric computed from it, follows from the
probabilities alone. `fit_calibration` fits an isotonic map from the model's probability to the observed
frequency on the holdout at registration (stored with the version); `estimate_metric` applies it to the
champion's probabilities on the current window and computes:

    roc_auc             the area under the expected ROC curve: at each score threshold, expected true
                        positives = sum of calibrated p above it, false positives = sum of (1 - p)
    accuracy, f1, precision, recall, balanced_accuracy
                        the metric of the expected confusion matrix at the model's threshold
    log_loss            the expected log loss

The estimate is only as good as the calibration: a change of P(y|x) (concept drift) is invisible to it, a
change of P(x) (covariate shift) is what it sees. Multiclass models are not estimated (None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml.metrics import from_confusion, predict_labels
from ml.result import Result

if TYPE_CHECKING:
    import numpy as np

#: points kept of the isotonic map (it is stored as a registry tag)
CALIBRATION_POINTS = 100
ESTIMABLE = ("roc_auc", "accuracy", "balanced_accuracy", "f1", "precision", "recall", "log_loss")


@dataclass(frozen=True)
class Calibration(Result):
    """An increasing piecewise-linear map of the positive-class probability (isotonic, clipped)."""

    x: list[float]
    y: list[float]

    def apply(self, p: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.interp(p, self.x, self.y)


def fit_calibration(y: np.ndarray, proba: np.ndarray) -> Calibration | None:
    """Isotonic calibration of a binary model's positive-class probability on labelled rows."""
    import numpy as np
    from sklearn.isotonic import IsotonicRegression

    if proba.shape[1] != 2 or len(np.unique(y)) < 2:
        return None
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(proba[:, 1], y)
    xs, ys = iso.X_thresholds_, iso.y_thresholds_
    if len(xs) > CALIBRATION_POINTS:
        keep = np.unique(np.rint(np.linspace(0, len(xs) - 1, CALIBRATION_POINTS)).astype(int))
        xs, ys = xs[keep], ys[keep]
    return Calibration(x=[round(float(v), 6) for v in xs], y=[round(float(v), 6) for v in ys])


def estimate_metric(metric: str, proba: np.ndarray, calibration: Calibration | None,
                    threshold: float = 0.5) -> float | None:
    """The expected value of `metric` on unlabelled rows scored `proba` (binary models), or None."""
    import numpy as np

    if proba.shape[1] != 2 or metric not in ESTIMABLE or len(proba) == 0:
        return None
    score = proba[:, 1]
    p = calibration.apply(score) if calibration is not None else score
    if metric == "roc_auc":
        return _expected_auc(score, p)
    if metric == "log_loss":
        q = np.clip(score, 1e-15, 1 - 1e-15)
        return float(-np.mean(p * np.log(q) + (1 - p) * np.log(1 - q)))
    predicted = predict_labels(proba, threshold) == 1
    tp, fp = float(p[predicted].sum()), float((1 - p[predicted]).sum())
    fn, tn = float(p[~predicted].sum()), float((1 - p[~predicted]).sum())
    return from_confusion(metric, tp, fp, fn, tn)


def _expected_auc(score: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the expected ROC curve, thresholds at every distinct score (ties move together)."""
    import numpy as np

    order = np.argsort(-score, kind="mergesort")
    s, p = score[order], p[order]
    last_of_group = np.append(np.diff(s) != 0, True)
    tp = np.concatenate([[0.0], np.cumsum(p)[last_of_group]])
    fp = np.concatenate([[0.0], np.cumsum(1 - p)[last_of_group]])
    if tp[-1] <= 0 or fp[-1] <= 0:
        return None
    return float(np.trapezoid(tp / tp[-1], fp / fp[-1]))


def calibration_tag(calibration: Calibration | None) -> dict[str, str]:
    """The registry tag carrying a version's calibration (empty without one)."""
    import json

    return {} if calibration is None else {"ct.calibration": json.dumps(calibration.to_dict(), separators=(",", ":"))}


def calibration_from_tags(tags: dict[str, Any]) -> Calibration | None:
    import json

    raw = tags.get("ct.calibration")
    return Calibration.from_dict(json.loads(raw)) if raw else None


def calibration_test(y: np.ndarray, proba: np.ndarray, calibration: Calibration | None,
                     bins: int = 10) -> tuple[float, float] | None:
    """Do labelled rows still follow the model's (calibrated) probabilities? (p-value, gap): a chi-squared
    test of observed vs expected positives in `bins` probability bins (Hosmer-Lemeshow style, variance
    from the probabilities themselves), and the mass-weighted mean |observed - expected| share. A change
    of P(y|x) that keeps the ranking (so ROC AUC) intact, such as a moved decision boundary, shows here."""
    import numpy as np
    from scipy.special import chdtrc  # scipy.stats.chi2.sf, without importing scipy.stats (0.4 s of a step)

    if proba.shape[1] != 2 or len(y) < 2 * bins:
        return None
    p = calibration.apply(proba[:, 1]) if calibration is not None else proba[:, 1]
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    observed = np.bincount(index, weights=y.astype(float), minlength=len(edges) - 1)
    expected = np.bincount(index, weights=p, minlength=len(edges) - 1)
    variance = np.bincount(index, weights=p * (1 - p), minlength=len(edges) - 1)
    used = variance > 0
    statistic = float(np.sum((observed[used] - expected[used]) ** 2 / variance[used]))
    gap = float(np.abs(observed - expected).sum() / len(y))
    return float(chdtrc(max(int(used.sum()), 1), statistic)), gap

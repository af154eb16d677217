"""Classification metrics on predicted probabilities, by name (the names config files use).

Every metric takes (y_true as class indices, proba as an [n, k] array, threshold) so gates, the
performance check and training report the same numbers. `HIGHER_IS_BETTER` says which way is good.

Most are scikit-learn's. The binary ROC AUC and the confusion-matrix metrics are computed here, by the weighted
forms the gates' bootstrap uses (`weighted_scorer`) with every row's weight 1, in exact integer sums: the same
values as scikit-learn's (tests/ml/test_metrics.py), and a step that scores a champion (performance) does not
import scikit-learn for them, which with the scipy.stats it pulls in is about a second of that step's start-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

HIGHER_IS_BETTER = {"roc_auc": True, "accuracy": True, "balanced_accuracy": True, "f1": True,
                    "precision": True, "recall": True, "log_loss": False, "average_precision": True}
#: binary metrics `score` computes with `weighted_scorer` (unit weights) instead of scikit-learn
OWN_BINARY = frozenset({"roc_auc", "accuracy", "balanced_accuracy", "f1", "precision", "recall"})


def predict_labels(proba: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class indices: binary uses the threshold on the positive column, multiclass the argmax."""
    import numpy as np

    if proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1)


def score(name: str, y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> float:
    """One metric; NaN when it is undefined on this sample (e.g. AUC with a single class)."""
    import numpy as np

    if name not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric '{name}'; available: {sorted(HIGHER_IS_BETTER)}")
    own = weighted_scorer(name, y_true, proba, threshold) if name in OWN_BINARY and len(y_true) else None
    if own is not None:  # binary: every row weighs 1
        return own(np.ones(len(y_true), dtype=np.int64))
    from sklearn import metrics as m

    binary = proba.shape[1] == 2
    n_classes = len(np.unique(y_true))
    if name == "roc_auc":
        if n_classes < 2:
            return math.nan
        if binary:
            return float(m.roc_auc_score(y_true, proba[:, 1]))
        return float(m.roc_auc_score(y_true, proba, multi_class="ovr", labels=list(range(proba.shape[1]))))
    if name == "average_precision":
        if n_classes < 2:
            return math.nan
        if binary:
            return float(m.average_precision_score(y_true, proba[:, 1]))
        return float(m.average_precision_score(np.eye(proba.shape[1])[y_true], proba, average="macro"))
    if name == "log_loss":
        return float(m.log_loss(y_true, np.clip(proba, 1e-15, 1.0), labels=list(range(proba.shape[1]))))
    y_pred = predict_labels(proba, threshold)
    average = "binary" if binary else "macro"
    if name == "accuracy":
        return float(m.accuracy_score(y_true, y_pred))
    if name == "balanced_accuracy":
        return float(m.balanced_accuracy_score(y_true, y_pred))
    fn = {"f1": m.f1_score, "precision": m.precision_score, "recall": m.recall_score}[name]
    return float(fn(y_true, y_pred, average=average, zero_division=0))


def all_scores(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    return {name: score(name, y_true, proba, threshold) for name in HIGHER_IS_BETTER}


def weighted_scorer(name: str, y_true: np.ndarray, proba: np.ndarray,
                    threshold: float = 0.5) -> Callable[[np.ndarray], float] | None:
    """`score` as a function of per-row weights (bootstrap counts), prepared once: a resample is the same
    rows with integer weights, so `scorer(np.bincount(idx, minlength=n))` equals
    `score(name, y[idx], proba[idx])`. The rows are sorted once (ROC AUC); each call is O(n). Binary
    tasks; None where no weighted form is implemented (the caller resamples instead)."""
    import numpy as np

    if proba.shape[1] != 2:
        return None
    y = np.asarray(y_true) == 1
    if name == "roc_auc":
        return _weighted_auc(y, proba[:, 1])
    if name == "log_loss":
        losses = -np.log(np.clip(np.where(y, proba[:, 1], proba[:, 0]), 1e-15, 1.0))
        return lambda w: float(np.dot(w, losses) / w.sum())
    predicted = predict_labels(proba, threshold) == 1
    if name not in ("accuracy", "balanced_accuracy", "precision", "recall", "f1"):
        return None
    cells = (y & predicted, ~y & predicted, y & ~predicted, ~y & ~predicted)

    def confusion(weights: np.ndarray) -> float:
        tp, fp, fn, tn = (float(np.dot(weights, cell)) for cell in cells)
        return from_confusion(name, tp, fp, fn, tn)

    return confusion


def _weighted_auc(positive: np.ndarray, scores: np.ndarray) -> Callable[[np.ndarray], float]:
    """ROC AUC as a function of row weights: each positive row counts the weight of the negatives scored below
    it plus half of those tied with it (integer weights, as bootstrap counts are, sum exactly). The rows are
    sorted once; a call gathers the weights, sums the negatives' cumulatively and takes one dot product, O(n)."""
    import numpy as np

    order = np.argsort(scores, kind="mergesort")
    negatives, positives = order[~positive[order]], order[positive[order]]
    negative_scores, positive_scores = scores[negatives], scores[positives]
    below = np.searchsorted(negative_scores, positive_scores, side="left")
    not_above = np.searchsorted(negative_scores, positive_scores, side="right")
    ties = bool((below != not_above).any())

    def auc(weights: np.ndarray) -> float:
        kind = np.int64 if weights.dtype.kind in "iub" else np.float64
        negative_weight = np.zeros(len(negatives) + 1, dtype=kind)
        np.cumsum(weights[negatives], out=negative_weight[1:], dtype=kind)
        positive_weight = weights[positives].astype(kind, copy=False)
        total_pos, total_neg = positive_weight.sum().item(), negative_weight[-1].item()
        if total_pos == 0 or total_neg == 0:
            return math.nan
        if ties:
            twice = np.dot(positive_weight, negative_weight[below] + negative_weight[not_above]).item()
        else:
            twice = 2 * np.dot(positive_weight, negative_weight[below]).item()
        return twice / (2 * total_pos * total_neg)

    return auc


def from_confusion(name: str, tp: float, fp: float, fn: float, tn: float) -> float:
    """scikit-learn's binary metric (zero_division=0) from weighted confusion counts."""
    if name == "accuracy":
        return (tp + tn) / (tp + fp + fn + tn)
    if name == "balanced_accuracy":
        recalls = [r for r in ((tp / (tp + fn)) if tp + fn else None, (tn / (tn + fp)) if tn + fp else None)
                   if r is not None]
        return sum(recalls) / len(recalls)
    if name == "precision":
        return tp / (tp + fp) if tp + fp else 0.0
    if name == "recall":
        return tp / (tp + fn) if tp + fn else 0.0
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0  # f1

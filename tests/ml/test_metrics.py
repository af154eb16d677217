"""ml.metrics: the binary metrics it computes itself (the bootstrap's weighted forms, unit weights) equal
scikit-learn's, on continuous scores, tied scores and the degenerate samples; and scoring them imports no
scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as m

from ml.metrics import OWN_BINARY, score
from tests.conftest import fresh_python

SKLEARN = {"roc_auc": lambda y, p, t: m.roc_auc_score(y, p),
           "accuracy": lambda y, p, t: m.accuracy_score(y, p >= t),
           "balanced_accuracy": lambda y, p, t: m.balanced_accuracy_score(y, p >= t),
           "f1": lambda y, p, t: m.f1_score(y, p >= t, zero_division=0),
           "precision": lambda y, p, t: m.precision_score(y, p >= t, zero_division=0),
           "recall": lambda y, p, t: m.recall_score(y, p >= t, zero_division=0)}


def _two(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p, p]).astype(np.float32)


@pytest.mark.parametrize("name", sorted(OWN_BINARY))
@pytest.mark.parametrize("levels", [None, 4])  # continuous scores; four score levels: ties everywhere
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_own_binary_metrics_equal_scikit_learns(name, levels, threshold):
    rng = np.random.default_rng(11)
    for rows in (7, 200, 5001):
        y = rng.integers(0, 2, rows)
        p = rng.random(rows) if levels is None else rng.integers(0, levels, rows) / (levels - 1)
        proba = _two(p)
        expected = SKLEARN[name](y, proba[:, 1], threshold)
        assert score(name, y, proba, threshold) == pytest.approx(expected, abs=1e-12), (name, rows)


@pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn's about a class missing from y_true
@pytest.mark.parametrize("name", sorted(OWN_BINARY - {"roc_auc"}))
def test_degenerate_samples_score_as_scikit_learn_does(name):
    for y, p in (([1, 1, 1], [0.9, 0.2, 0.7]), ([0, 0], [0.1, 0.2]), ([0, 1, 0], [0.1, 0.2, 0.3]),
                 ([1, 0], [0.9, 0.9])):
        y, p = np.array(y), np.array(p)
        assert score(name, y, _two(p)) == pytest.approx(SKLEARN[name](y, _two(p)[:, 1], 0.5), abs=1e-12), (y, p)
    assert math.isnan(score("roc_auc", np.array([1, 1]), _two(np.array([0.2, 0.8]))))


def test_scoring_a_binary_champion_imports_no_scikit_learn():
    script = ("import sys, numpy as np\nfrom ml.metrics import score, OWN_BINARY\n"
              "p = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]], dtype=np.float32)\n"
              "print([round(score(n, np.array([0, 1, 0]), p), 6) for n in sorted(OWN_BINARY)], "
              "'sklearn' in sys.modules)")
    done = fresh_python(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("False")

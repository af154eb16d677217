import math

import numpy as np
import pandas as pd
import pytest

from ml.gates import (
    challenger_vs_champion_gate,
    fairness_gate,
    latency_gate,
    min_metric_gate,
    paired_bootstrap,
    parity_gate,
    rate_ratio_interval,
    size_gate,
)


def two_col(p):
    p = np.asarray(p, dtype=float)
    return np.column_stack([1 - p, p])


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 800)
    good = np.clip(0.5 + (y - 0.5) * 0.5 + rng.normal(0, 0.2, 800), 0.01, 0.99)
    weak = np.clip(0.5 + (y - 0.5) * 0.1 + rng.normal(0, 0.3, 800), 0.01, 0.99)
    return y, two_col(good), two_col(weak)


def test_min_metric_gate_directions():
    assert min_metric_gate("roc_auc", 0.8, 0.7).passed
    assert not min_metric_gate("roc_auc", 0.6, 0.7).passed
    assert min_metric_gate("log_loss", 0.3, 0.5).passed  # lower is better
    assert not min_metric_gate("roc_auc", math.nan, 0.7).passed


def test_paired_bootstrap_of_a_model_against_itself_is_zero(labelled):
    y, good, _ = labelled
    point, lo, hi = paired_bootstrap("roc_auc", y, good, good, 100, 0.95, 0)
    assert point == 0 and lo == 0 and hi == 0


def test_challenger_vs_champion(labelled):
    y, good, weak = labelled
    same = challenger_vs_champion_gate("roc_auc", y, good, good, "1", 0.02, 200, 0.95, 0)
    assert same.passed and same.threshold == -0.02
    worse = challenger_vs_champion_gate("roc_auc", y, weak, good, "1", 0.02, 200, 0.95, 0)
    assert not worse.passed and worse.value < -0.1 and "champion v1" in worse.detail
    better = challenger_vs_champion_gate("roc_auc", y, good, weak, "1", 0.02, 200, 0.95, 0)
    assert better.passed and better.value > 0.1


def test_bootstrap_case_requires_beating_the_no_skill_baseline(labelled):
    y, good, _ = labelled
    assert challenger_vs_champion_gate("roc_auc", y, good, None, None, 0.02, 200, 0.95, 0).passed
    noise = two_col(np.random.default_rng(1).uniform(size=len(y)))
    result = challenger_vs_champion_gate("roc_auc", y, noise, None, None, 0.02, 200, 0.95, 0)
    assert not result.passed and "no-skill baseline" in result.detail


def test_rate_ratio_interval_matches_the_katz_formula():
    lo, hi = rate_ratio_interval(30, 100, 40, 100, 0.95)
    se = math.sqrt(1 / 30 - 1 / 100 + 1 / 40 - 1 / 100)
    assert lo == pytest.approx(0.75 * math.exp(-1.959964 * se), rel=1e-5)
    assert hi == pytest.approx(0.75 * math.exp(1.959964 * se), rel=1e-5)
    lo0, hi0 = rate_ratio_interval(0, 50, 10, 50, 0.95)  # zero cell: Haldane correction, still finite
    assert 0 < lo0 < hi0 < 1


def test_fairness_gate():
    groups = pd.Series(["a"] * 2000 + ["b"] * 2000)
    fair = two_col([0.9] * 600 + [0.1] * 1400 + [0.9] * 580 + [0.1] * 1420)
    assert fairness_gate(groups, fair, 0.5, 0.8, 30, "g").passed
    unfair = two_col([0.9] * 800 + [0.1] * 1200 + [0.9] * 300 + [0.1] * 1700)
    result = fairness_gate(groups, unfair, 0.5, 0.8, 30, "g")
    assert not result.passed and result.value == pytest.approx(300 / 800)
    small = pd.Series(["a"] * 40 + ["b"] * 40)  # noisy point estimate 0.625, interval reaches 0.8
    noisy = two_col([0.9] * 16 + [0.1] * 24 + [0.9] * 10 + [0.1] * 30)
    assert fairness_gate(small, noisy, 0.5, 0.8, 30, "g").passed
    assert "no sensitive_feature" in fairness_gate(None, fair, 0.5, 0.8, 30, None).detail
    assert "fewer than 2" in fairness_gate(groups, fair, 0.5, 0.8, 5000, "g").detail


def test_parity_latency_size():
    a = two_col([0.2, 0.7])
    assert parity_gate(a, a + 1e-6, 1e-4).passed
    assert not parity_gate(a, a + 1e-2, 1e-4).passed
    assert not parity_gate(a, a[:1], 1e-4).passed
    assert latency_gate(1.0, 10).passed and not latency_gate(11.0, 10).passed
    assert size_gate(2_000_000, 50).value == 2.0 and not size_gate(60_000_000, 50).passed

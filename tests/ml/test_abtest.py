"""The canary's verdict (ml.abtest) and the shadow comparison (ml.shadow) as pure functions, on known values."""

from __future__ import annotations

import numpy as np
import pytest

from ml.abtest import Arm, canary_test, judge_canary, two_sample_bootstrap
from ml.config import CanaryConfig, parse_config
from ml.errors import ConfigError
from ml.shadow import shadow_report, variant_arms


def arm(n: int, skill: float, seed: int, version: str = "1") -> Arm:
    """n labelled predictions whose positive-class score separates the classes by `skill`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.5 + skill * (y - 0.5) + rng.normal(0, 0.2, n), 0.001, 0.999)
    return Arm(version, y, np.column_stack([1 - p, p]))


CFG = CanaryConfig(min_samples=300, bootstrap_rounds=400)


def test_the_bootstrap_difference_is_the_metric_difference_and_its_interval_covers_it():
    a, b = arm(400, 0.6, 1), arm(400, 0.1, 2)
    point, lo, hi = two_sample_bootstrap("accuracy", a, b, 400, 0.95, seed=0)
    acc = [float(np.mean((x.proba[:, 1] >= 0.5) == x.y)) for x in (a, b)]
    assert point == pytest.approx(acc[0] - acc[1])
    assert lo < point < hi and lo > 0
    # log loss: lower is better, so the sign flips and a better arm stays positive
    assert two_sample_bootstrap("log_loss", a, b, 200, 0.95, seed=0)[0] > 0


def test_a_better_canary_is_promoted_and_a_worse_one_rolled_back():
    champion = arm(500, 0.3, 3)
    better = canary_test("roc_auc", champion, arm(500, 0.7, 4, "2"), CFG)
    worse = canary_test("roc_auc", champion, arm(500, 0.0, 5, "2"), CFG)
    assert better.horizon == 300 and better.champion_n == 500
    assert judge_canary(better, {}, CFG, 1.0).verdict == "promote"
    verdict = judge_canary(worse, {}, CFG, 1.0)
    assert verdict.verdict == "rollback" and "not shown to be as good" in verdict.reason


def test_the_test_waits_for_the_horizon_then_times_out():
    early = canary_test("roc_auc", arm(100, 0.3, 3), arm(299, 0.7, 4), CFG)
    assert early.difference is None
    assert judge_canary(early, {}, CFG, 1.0).verdict == "waiting"
    late = judge_canary(early, {}, CFG, CFG.timeout_h + 1)
    assert late.verdict == "rollback" and "timeout_h" in late.reason


@pytest.mark.parametrize(("guardrails", "verdict", "text"), [
    ({"requests": 100, "error_rate": 0.05}, "rollback", "error rate 5.00%"),
    ({"requests": 100, "error_rate": 0.0, "latency_p99_ms": 80.0}, "rollback", "p99 scoring latency 80.00 ms"),
    ({"requests": 10, "error_rate": 0.5}, "waiting", "waiting for labels"),  # too few requests to judge
])
def test_guardrails_roll_back_at_once(guardrails, verdict, text):
    early = canary_test("roc_auc", arm(10, 0.3, 3), arm(10, 0.7, 4), CFG)
    result = judge_canary(early, guardrails, CFG, 1.0)
    assert result.verdict == verdict and text in result.reason


def _line(pid: str, p: float, shadow: float | None, variant: str | None = None, version: str = "1") -> dict:
    line = {"prediction_id": pid, "model_version": version, "timestamp": pid,
            "output": {"label": "1" if p >= 0.5 else "0", "probabilities": {"0": 1 - p, "1": p}}}
    if shadow is not None:
        line["shadow"] = {"model_version": "2", "label": "1" if shadow >= 0.5 else "0",
                          "probabilities": {"0": 1 - shadow, "1": shadow}}
    if variant:
        line["variant"] = variant
    return line


CONFIG = parse_config({"name": "m", "target": "y", "positive_class": 1, "features": {"numeric": ["a"]},
                       "data": {"reference": "r.csv"}, "performance": {"metric": "accuracy"}})


def test_shadow_report_agreement_distances_and_metric():
    lines = [_line(f"{i:04d}", 0.8 if i % 2 else 0.2, 0.9 if i % 2 else (0.6 if i % 4 == 0 else 0.1))
             for i in range(200)]
    labels = {f"{i:04d}": "1" if i % 2 else "0" for i in range(200)}
    report = shadow_report(CONFIG, lines, labels, rounds=200)
    assert report.rows == 200 and report.shadow_version == "2" and report.champion_versions == ["1"]
    assert report.agreement == pytest.approx(0.75)  # every 4th request: the shadow says 1, the champion 0
    assert report.labelled == 200 and report.champion_metric == 1.0 and report.shadow_metric == 0.75
    assert report.difference == pytest.approx(-0.25)
    assert report.mean_abs_score_difference == pytest.approx((0.1 * 100 + 0.4 * 50 + 0.1 * 50) / 200)
    assert report.score_ks_p_value < 0.05 and report.score_wasserstein > 0


def test_shadow_report_without_shadow_lines_is_empty():
    report = shadow_report(CONFIG, [_line("a", 0.7, None)], {})
    assert report.rows == 0 and report.agreement is None


def test_variant_arms_take_each_variants_labelled_predictions():
    lines = [_line("a", 0.9, None, "champion"), _line("b", 0.2, None, "canary", "3"),
             _line("c", 0.4, None, "canary", "3"), _line("d", 0.6, None, "champion")]
    champion, canary = variant_arms(lines, {"a": "1", "b": "0", "c": "1"}, "3")
    assert champion.n == 1 and champion.version == "1" and champion.y.tolist() == [1]
    assert canary.n == 2 and canary.proba[:, 1].tolist() == [0.2, 0.4]


def test_the_canary_key_must_be_a_feature():
    with pytest.raises(ConfigError, match="deploy.canary.key: 'user' is not a feature"):
        parse_config({"name": "m", "target": "y", "positive_class": 1, "features": {"numeric": ["a"]},
                      "data": {"reference": "r.csv"}, "deploy": {"canary": {"key": "user"}}})
    with pytest.raises(ConfigError, match="fraction"):
        parse_config({"name": "m", "target": "y", "positive_class": 1, "features": {"numeric": ["a"]},
                      "data": {"reference": "r.csv"}, "deploy": {"strategy": "canary", "canary": {"fraction": 1.5}}})

"""Validation gates: every one must pass before a challenger is registered; each result is recorded.

Gates (pure functions over arrays, so they are tested without MLflow or files):
- `min_<metric>`: absolute thresholds on the holdout (`gates.min_metrics`).
- `challenger_vs_champion`: paired bootstrap of (challenger - champion) on the same holdout rows,
  the newest labelled data, a non-inferiority test with margin `gates.max_regression`:
    lower confidence bound >= -margin         -> passes (not worse)
    upper confidence bound <  -margin         -> fails (worse)
    otherwise the holdout cannot tell         -> inconclusive: passes only when the champion has
                                                 decayed (performance.max_decay) and the challenger is
                                                 at least as good on these rows; else the champion stays
  The interval and the power (the chance this holdout shows non-inferiority for two equal models) are
  recorded, so a small holdout reads as "inconclusive, power 23%", not as "worse". With no champion (the
  first run) the challenger must beat a no-skill baseline (the class prior) with the lower bound above
  zero: the bootstrap case is explicit, not a rubber stamp.
- `fairness`: disparate impact (min / max positive-prediction rate over `sensitive_feature` groups
  with at least `gates.fairness_min_group_size` rows). It fails when the point estimate is below
  `gates.fairness_min_ratio` and the groups' positive rates differ significantly (chi-squared test of
  homogeneity, p < 1 - `gates.confidence`): the four-fifths rule together with statistical significance,
  as the US Uniform Guidelines (29 CFR 1607.4D) read it. A bare point estimate over several groups is
  biased low: a perfectly fair model with six groups of 300 rows at a 30% positive rate reads below 0.8
  about half the time by sampling noise alone. The Katz interval of the ratio is recorded beside it.
  Groups below the minimum size are listed as not evaluated; with fewer than two groups left the gate
  is "not evaluated: N rows", which passes unless `gates.fairness_unevaluable: block`.
- `onnx_parity`: max |sklearn - onnxruntime| probability difference <= `gates.parity_tolerance`.
- `latency`: p99 single-row onnxruntime latency in-process <= `gates.max_latency_ms`.
- `size`: ONNX file size <= `gates.max_size_mb`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml.errors import ChallengerRejected, GatesFailed
from ml.metrics import HIGHER_IS_BETTER, predict_labels, score
from ml.result import Result

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ml.config import ModelConfig


@dataclass(frozen=True)
class GateResult(Result):
    passed: bool
    value: float | None
    threshold: float | None
    detail: str = ""
    #: the confidence interval of `value`, where the gate estimates one
    interval: list[float] | None = None
    #: challenger_vs_champion: the chance this holdout shows non-inferiority if both models were equal
    power: float | None = None
    #: challenger_vs_champion: not_worse | worse | inconclusive (| better_than_baseline | not_better_than_baseline)
    outcome: str | None = None


@dataclass(frozen=True)
class GateReport(Result):
    """The gates step's result: every gate, and the champion the challenger was judged against."""

    summary_fields = ("passed", "failed", "champion_version")

    gates: dict[str, GateResult]
    champion_version: str | None = None
    #: the champion had decayed (the performance step): rejecting the challenger leaves a decayed model serving
    champion_decayed: bool = False

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, g in self.gates.items() if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, **super().to_dict()}

    @property
    def champion_kept(self) -> bool:
        """Rejected, with a healthy champion serving on: a correct outcome, not a failure."""
        return not self.passed and self.champion_version is not None and not self.champion_decayed

    def stop_error(self) -> GatesFailed | None:
        if self.passed:
            return None
        details = "; ".join(f"{name}: {self.gates[name].detail}" for name in self.failed)
        message = f"challenger rejected, gate(s) failed: {', '.join(self.failed)} ({details})"
        if self.champion_kept:
            return ChallengerRejected(f"{message}; champion v{self.champion_version} is healthy and stays")
        if self.champion_version is not None:
            message += f"; champion v{self.champion_version} has decayed and no acceptable challenger replaces it"
        return GatesFailed(message)


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def min_metric_gate(metric: str, value: float, threshold: float) -> GateResult:
    if math.isnan(value):
        return GateResult(False, None, threshold, f"{metric} is undefined on the holdout (a single class?)")
    higher = HIGHER_IS_BETTER[metric]
    passed = value >= threshold if higher else value <= threshold
    relation = ">=" if higher else "<="
    return GateResult(passed, value, threshold, f"{metric} {value:.4f} must be {relation} {threshold}")


def paired_bootstrap(metric: str, y: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, rounds: int,
                     confidence: float, seed: int, threshold: float = 0.5) -> tuple[float, float, float]:
    """(point estimate, lower, upper) of metric(a) - metric(b), sign-flipped for lower-is-better metrics
    so that positive always means 'a is better'. Resamples rows jointly (paired). Where the metric has a
    weighted form (ml.metrics.weighted_scorer) a resample is scored as bootstrap counts on rows sorted
    once, O(n) per round, with exactly the values resampling gives."""
    import numpy as np

    from ml.metrics import weighted_scorer

    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    point = sign * (score(metric, y, proba_a, threshold) - score(metric, y, proba_b, threshold))
    rng = np.random.default_rng(seed)
    scorers = weighted_scorer(metric, y, proba_a, threshold), weighted_scorer(metric, y, proba_b, threshold)
    diffs = []
    for _ in range(rounds):
        idx = rng.integers(0, len(y), len(y))
        if scorers[0] is not None and scorers[1] is not None:
            weights = np.bincount(idx, minlength=len(y))
            d = scorers[0](weights) - scorers[1](weights)
        else:
            d = score(metric, y[idx], proba_a[idx], threshold) - score(metric, y[idx], proba_b[idx], threshold)
        if not math.isnan(d):
            diffs.append(sign * d)
    return percentile_interval(point, diffs, confidence)


def percentile_interval(point: float, diffs: list[float], confidence: float) -> tuple[float, float, float]:
    """(point, lower, upper): the two-sided percentile interval of bootstrap differences (NaN when none)."""
    import numpy as np

    if not diffs:
        return point, math.nan, math.nan
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return float(point), float(lo), float(hi)


def non_inferiority_power(lower: float, upper: float, margin: float, confidence: float) -> float:
    """The chance that a holdout like this one shows non-inferiority (lower bound >= -margin) when both
    models are equal, from the bootstrap interval's width (normal approximation)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    se = (upper - lower) / (2 * z)
    if not se > 0:
        return 1.0
    return NormalDist().cdf(margin / se - z)


def challenger_vs_champion_gate(metric: str, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None,
                                champion_version: str | None, max_regression: float, rounds: int,
                                confidence: float, seed: int, threshold: float = 0.5,
                                champion_decayed: bool = False) -> GateResult:
    import numpy as np

    pct = f"{confidence:.0%}"
    if champion is None:
        prior = np.bincount(y, minlength=challenger.shape[1]) / len(y)
        baseline = np.tile(prior, (len(y), 1))
        point, lo, hi = paired_bootstrap(metric, y, challenger, baseline, rounds, confidence, seed, threshold)
        passed = not math.isnan(lo) and lo > 0
        return GateResult(passed, _finite(point), 0.0,
                          f"bootstrap (no champion yet): {metric} gain over the no-skill baseline {point:+.4f}, "
                          f"{pct} CI [{lo:+.4f}, {hi:+.4f}] must lie above 0", interval=_interval(lo, hi),
                          outcome="better_than_baseline" if passed else "not_better_than_baseline")
    point, lo, hi = paired_bootstrap(metric, y, challenger, champion, rounds, confidence, seed, threshold)
    margin = -max_regression
    head = (f"{metric} challenger - champion v{champion_version} = {point:+.4f}, {pct} CI [{lo:+.4f}, {hi:+.4f}] "
            f"on {len(y)} rows, margin {margin:+.4f}")
    if math.isnan(lo):
        return GateResult(False, _finite(point), margin, f"{head}: {metric} undefined on the holdout")
    power = non_inferiority_power(lo, hi, max_regression, confidence)
    if lo >= margin:
        outcome, passed, why = "not_worse", True, "not worse (lower bound >= margin)"
    elif hi < margin:
        outcome, passed, why = "worse", False, "worse (upper bound < margin)"
    elif champion_decayed and point >= 0:
        outcome, passed, why = "inconclusive", True, ("inconclusive; the champion has decayed and the challenger "
                                                      "is at least as good on the newest rows: preferred")
    else:
        outcome, passed, why = "inconclusive", False, (
            "inconclusive; the champion stays" + ("" if champion_decayed else " (it has not decayed)"))
    return GateResult(passed, _finite(point), margin, f"{head}: {why}; power {power:.0%}",
                      interval=_interval(lo, hi), power=power, outcome=outcome)


def _interval(lo: float, hi: float) -> list[float] | None:
    return None if math.isnan(lo) else [lo, hi]


def rate_ratio_interval(pos_a: float, n_a: int, pos_b: float, n_b: int, confidence: float) -> tuple[float, float]:
    """Katz log confidence interval of (pos_a/n_a) / (pos_b/n_b), with the Haldane-Anscombe +0.5
    correction when a count is zero."""
    from statistics import NormalDist

    if min(pos_a, pos_b, n_a - pos_a, n_b - pos_b) == 0:
        pos_a, pos_b, n_a, n_b = pos_a + 0.5, pos_b + 0.5, n_a + 1, n_b + 1
    log_ratio = math.log((pos_a / n_a) / (pos_b / n_b))
    se = math.sqrt(1 / pos_a - 1 / n_a + 1 / pos_b - 1 / n_b)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    return math.exp(log_ratio - z * se), math.exp(log_ratio + z * se)


def fairness_gate(groups: pd.Series | None, proba: np.ndarray, threshold: float, min_ratio: float,
                  min_group_size: int, feature: str | None, confidence: float = 0.95,
                  block_unevaluable: bool = False) -> GateResult:
    """Disparate impact = lowest / highest positive-prediction rate over `feature` groups with at least
    min_group_size rows; fails when it is below min_ratio and the rates differ significantly (module
    docstring). Too-small groups are listed as not evaluated; with fewer than two groups left, the gate is
    not evaluated and passes unless `block_unevaluable` (gates.fairness_unevaluable: block)."""
    import pandas as pd
    from scipy import stats as scipy_stats

    if feature is None or groups is None:
        return GateResult(True, None, min_ratio, "not evaluated: no sensitive_feature in the config",
                          outcome="not_evaluated")
    if proba.shape[1] != 2:
        return GateResult(True, None, min_ratio, "not evaluated: disparate impact is defined for binary tasks",
                          outcome="not_evaluated")
    positive = pd.Series(predict_labels(proba, threshold), index=groups.index)
    stats = positive.groupby(groups.astype(str)).agg(["sum", "size"])
    small = stats[stats["size"] < min_group_size]
    stats = stats[stats["size"] >= min_group_size]
    skipped = (f"; not evaluated: {', '.join(f'{g} ({n} rows)' for g, n in small['size'].items())} "
               f"(< gates.fairness_min_group_size {min_group_size})") if len(small) else ""
    if len(stats) < 2:
        return GateResult(not block_unevaluable, None, min_ratio,
                          f"not evaluated: {len(stats)} '{feature}' group(s) with >= {min_group_size} rows in the "
                          f"holdout of {len(groups)} rows{skipped}"
                          + ("; gates.fairness_unevaluable: block" if block_unevaluable else ""),
                          outcome="not_evaluated")
    rates = (stats["sum"] / stats["size"]).sort_values()
    low, high = rates.index[0], rates.index[-1]
    if rates[high] == 0:
        return GateResult(True, 1.0, min_ratio, f"no group of '{feature}' receives a positive prediction{skipped}",
                          outcome="fair")
    ratio = float(rates[low] / rates[high])
    lo, hi = rate_ratio_interval(stats.loc[low, "sum"], stats.loc[low, "size"], stats.loc[high, "sum"],
                                 stats.loc[high, "size"], confidence)
    table = [stats["sum"].to_numpy(), (stats["size"] - stats["sum"]).to_numpy()]
    p_value = float(scipy_stats.chi2_contingency(table).pvalue) if min(map(sum, table)) > 0 else 1.0
    significant = p_value < 1 - confidence
    if ratio >= min_ratio:
        outcome, passed, verdict = "fair", True, f">= {min_ratio}"
    elif significant:
        outcome, passed, verdict = "unfair", False, f"< {min_ratio} and the rates differ significantly"
    else:
        outcome, passed, verdict = "below_ratio_not_significant", True, (
            f"< {min_ratio}, but the rates do not differ significantly on these rows (review it)")
    listed = ", ".join(f"{g}={r:.3f}" for g, r in rates.items())
    return GateResult(passed, ratio, min_ratio,
                      f"disparate impact on '{feature}' = {ratio:.3f} ({low} vs {high}) {verdict}: chi-squared "
                      f"p={p_value:.3g}, {confidence:.0%} CI [{lo:.3f}, {hi:.3f}] (positive rates: {listed}){skipped}",
                      interval=[lo, hi], outcome=outcome)


def parity_gate(sklearn_proba: np.ndarray, onnx_proba: np.ndarray, tolerance: float) -> GateResult:
    import numpy as np

    if sklearn_proba.shape != onnx_proba.shape:
        return GateResult(False, None, tolerance,
                          f"output shapes differ: sklearn {sklearn_proba.shape} vs onnx {onnx_proba.shape}")
    diff = float(np.abs(sklearn_proba - onnx_proba).max()) if len(onnx_proba) else 0.0
    return GateResult(diff <= tolerance, diff, tolerance,
                      f"max |sklearn - onnxruntime| probability difference over {len(onnx_proba)} rows")


def latency_gate(p99_ms: float, budget_ms: float) -> GateResult:
    return GateResult(p99_ms <= budget_ms, p99_ms, budget_ms, "p99 single-row onnxruntime latency (ms), in-process")


def size_gate(size_bytes: int, max_mb: float) -> GateResult:
    size_mb = size_bytes / 1e6
    return GateResult(size_mb <= max_mb, size_mb, max_mb, "ONNX file size (MB)")


def evaluate_gates(config: ModelConfig, *, y: np.ndarray, challenger_proba: np.ndarray,
                   sklearn_proba: np.ndarray, champion_proba: np.ndarray | None, champion_version: str | None,
                   groups: pd.Series | None, latency_p99_ms: float, size_bytes: int,
                   champion_decayed: bool = False, onnx_proba: np.ndarray | None = None) -> GateReport:
    """All gates, in a fixed order. Inputs are the holdout labels and each model's probabilities: the
    challenger's as judged, and (parity) the fitted pipeline's and the served ONNX model's on the same rows
    (`onnx_proba`, default `challenger_proba`: they differ when the holdout was cross-fitted)."""
    g = config.gates
    threshold = config.model.threshold
    results: dict[str, GateResult] = {}
    for metric, minimum in g.min_metrics.items():
        results[f"min_{metric}"] = min_metric_gate(metric, score(metric, y, challenger_proba, threshold), minimum)
    results["challenger_vs_champion"] = challenger_vs_champion_gate(
        config.performance.metric, y, challenger_proba, champion_proba, champion_version, g.max_regression,
        g.bootstrap_rounds, g.confidence, config.training.seed, threshold, champion_decayed=champion_decayed)
    results["fairness"] = fairness_gate(groups, challenger_proba, threshold, g.fairness_min_ratio,
                                        g.fairness_min_group_size, config.sensitive_feature, g.confidence,
                                        block_unevaluable=g.fairness_unevaluable == "block")
    results["onnx_parity"] = parity_gate(sklearn_proba, challenger_proba if onnx_proba is None else onnx_proba,
                                         g.parity_tolerance)
    results["latency"] = latency_gate(latency_p99_ms, g.max_latency_ms)
    results["size"] = size_gate(size_bytes, g.max_size_mb)
    return GateReport(results, champion_version=champion_version, champion_decayed=champion_decayed)

"""The canary's verdict from live traffic: a fixed-horizon bootstrap test on the feedback metric, plus
guardrails on the canary's error rate and latency. Pure functions; ml.deploy.canary gathers the inputs.

The test (stated, so nobody has to guess what "significant" meant):

* **Samples**: each variant's predictions that got a label back through /feedback, oldest first. The test
  looks **once**, when both variants have `deploy.canary.min_samples` labelled predictions, and uses exactly
  the first `min_samples` of each (a fixed horizon: looking again and again at a growing sample would
  inflate the false-promotion rate; a sequential test such as mSPRT is the alternative we did not take).
* **Statistic**: d = metric(canary) - metric(champion) on `performance.metric` (sign-flipped for log loss,
  so positive always means "canary better"), with a two-sample percentile bootstrap (each arm resampled on
  its own, `deploy.canary.bootstrap_rounds` rounds, seeded), two-sided `deploy.canary.confidence` interval.
* **Verdict**: promote when the lower bound is at least -`deploy.canary.max_regression` (non-inferiority;
  with the default margin 0 the canary must be shown at least as good), else roll back.
* **Guardrails**, judged at every look once the canary answered `min_requests` requests: its scoring error
  rate above `max_error_rate` or its p99 scoring latency above `max_latency_ms` roll it back at once.
* No verdict within `timeout_h` of the start (labels too slow): roll back; the champion stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ml.metrics import HIGHER_IS_BETTER, score, weighted_scorer
from ml.result import Result

if TYPE_CHECKING:
    import numpy as np

    from ml.config import CanaryConfig

Verdict = Literal["waiting", "promote", "rollback"]


@dataclass(frozen=True)
class Arm:
    """One variant's labelled predictions: class indices and probabilities, oldest first."""

    version: str | None
    y: np.ndarray
    proba: np.ndarray

    @property
    def n(self) -> int:
        return len(self.y)

    def first(self, n: int) -> Arm:
        return Arm(self.version, self.y[:n], self.proba[:n])


@dataclass(frozen=True)
class CanaryTest(Result):
    """The bootstrap test's numbers (null until both arms reached the horizon)."""

    metric: str
    horizon: int
    champion_n: int
    canary_n: int
    champion_value: float | None = None
    canary_value: float | None = None
    difference: float | None = None
    interval: list[float] | None = None
    confidence: float = 0.95
    margin: float = 0.0


@dataclass(frozen=True)
class CanaryVerdict(Result):
    summary_fields = ("verdict", "reason")

    verdict: Verdict
    reason: str
    test: CanaryTest
    guardrails: dict[str, Any] = field(default_factory=dict)


def two_sample_bootstrap(metric: str, a: Arm, b: Arm, rounds: int, confidence: float, seed: int,
                         threshold: float = 0.5) -> tuple[float, float, float]:
    """(point, lower, upper) of metric(a) - metric(b), positive = a better; each arm resampled on its own."""
    import numpy as np

    from ml.gates import percentile_interval

    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    point = sign * (score(metric, a.y, a.proba, threshold) - score(metric, b.y, b.proba, threshold))
    rng = np.random.default_rng(seed)
    scorers = [weighted_scorer(metric, arm.y, arm.proba, threshold) for arm in (a, b)]
    diffs = []
    for _ in range(rounds):
        values = []
        for arm, scorer in zip((a, b), scorers, strict=True):
            idx = rng.integers(0, arm.n, arm.n)
            values.append(scorer(np.bincount(idx, minlength=arm.n)) if scorer is not None
                          else score(metric, arm.y[idx], arm.proba[idx], threshold))
        d = values[0] - values[1]
        if not math.isnan(d):
            diffs.append(sign * d)
    return percentile_interval(point, diffs, confidence)


def canary_test(metric: str, champion: Arm, canary: Arm, config: CanaryConfig, threshold: float = 0.5,
                seed: int = 0) -> CanaryTest:
    """The test at its horizon (numbers null while either arm has fewer than min_samples labels)."""
    base = CanaryTest(metric=metric, horizon=config.min_samples, champion_n=champion.n, canary_n=canary.n,
                      confidence=config.confidence, margin=config.max_regression)
    if min(champion.n, canary.n) < config.min_samples:
        return base
    a, b = canary.first(config.min_samples), champion.first(config.min_samples)
    point, lo, hi = two_sample_bootstrap(metric, a, b, config.bootstrap_rounds, config.confidence, seed, threshold)
    return CanaryTest(metric=metric, horizon=config.min_samples, champion_n=champion.n, canary_n=canary.n,
                      champion_value=score(metric, b.y, b.proba, threshold),
                      canary_value=score(metric, a.y, a.proba, threshold), difference=point,
                      interval=[lo, hi] if not math.isnan(lo) else None, confidence=config.confidence,
                      margin=config.max_regression)


def _guardrail_breach(guardrails: dict[str, Any], config: CanaryConfig) -> str | None:
    requests = guardrails.get("requests") or 0
    if requests < config.min_requests:
        return None
    rate = guardrails.get("error_rate") or 0.0
    if rate > config.max_error_rate:
        return f"canary error rate {rate:.2%} over {requests} requests > deploy.canary.max_error_rate " \
               f"{config.max_error_rate:.2%}"
    p99 = guardrails.get("latency_p99_ms")
    if p99 is not None and p99 > config.max_latency_ms:
        return f"canary p99 scoring latency {p99:.2f} ms > deploy.canary.max_latency_ms {config.max_latency_ms}"
    return None


def judge_canary(test: CanaryTest, guardrails: dict[str, Any], config: CanaryConfig,
                 elapsed_h: float) -> CanaryVerdict:
    """waiting | promote | rollback, and why (guardrails first, then the test, then the timeout)."""
    breach = _guardrail_breach(guardrails, config)
    if breach is not None:
        return CanaryVerdict("rollback", breach, test, guardrails)
    if test.difference is not None:
        lo = test.interval[0] if test.interval else math.nan
        text = (f"{test.metric}: canary {test.canary_value:.4f} vs champion {test.champion_value:.4f} on the first "
                f"{test.horizon} labelled predictions each; difference {test.difference:+.4f}, "
                f"{test.confidence:.0%} interval [{lo:+.4f}, {test.interval[1] if test.interval else math.nan:+.4f}]")
        if lo >= -test.margin:
            return CanaryVerdict("promote", f"{text}: lower bound >= -{test.margin} (not worse)", test, guardrails)
        return CanaryVerdict("rollback", f"{text}: lower bound < -{test.margin} (not shown to be as good)", test,
                             guardrails)
    if elapsed_h > config.timeout_h:
        return CanaryVerdict("rollback", f"no verdict within deploy.canary.timeout_h={config.timeout_h}: labelled "
                                         f"predictions champion {test.champion_n}, canary {test.canary_n} of "
                                         f"{test.horizon} needed", test, guardrails)
    return CanaryVerdict("waiting", f"waiting for labels: champion {test.champion_n}, canary {test.canary_n} of "
                                    f"{test.horizon} labelled predictions each", test, guardrails)

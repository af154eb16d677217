"""The performance check of the champion and the retrain decision. Pure functions.

Decision rules, in order (the first that applies wins; the reason names every trigger found):
1. contract failed                                   -> blocked
2. force_retrain                                     -> retrain
3. no champion                                       -> retrain (bootstrap)
4. champion already trained on this exact window     -> skip
5. performance decayed on labelled current data      -> retrain (performance decay)
6. dataset drift and the current window has labels   -> retrain (data drift)
7. dataset drift without labels                      -> skip: nothing new to learn from; label it
8. otherwise                                         -> skip
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ml.metrics import HIGHER_IS_BETTER
from ml.result import Result

if TYPE_CHECKING:
    from ml.drift import DriftResult

#: retrain | skip | blocked are the pipeline's; rollback | deploy record an operator's action (ml.pipeline).
Verdict = Literal["retrain", "skip", "blocked", "rollback", "deploy"]


@dataclass(frozen=True)
class PerformanceResult(Result):
    summary_fields = ("champion_version", "metric", "on_reference", "on_current", "decayed", "detail")

    champion_version: str | None
    metric: str
    on_reference: float | None
    on_current: float | None
    decayed: bool
    labelled_rows: int
    max_decay: float
    detail: str


@dataclass(frozen=True)
class Decision(Result):
    summary_fields = ("decision", "reason", "triggers")

    decision: Verdict
    reason: str
    triggers: list[str] = field(default_factory=list)
    force_retrain: bool = False


def assess_performance(metric: str, champion_version: str | None, on_reference: float | None,
                       on_current: float | None, labelled_rows: int, min_labelled_rows: int,
                       max_decay: float) -> PerformanceResult:
    """Has the champion's metric on labelled current data fallen more than max_decay below its
    reference (holdout) value?"""
    def result(decayed: bool, detail: str) -> PerformanceResult:
        return PerformanceResult(champion_version, metric, on_reference, on_current, decayed, labelled_rows,
                                 max_decay, detail)

    if champion_version is None:
        return result(False, "no champion yet")
    if labelled_rows < min_labelled_rows:
        return result(False, f"{labelled_rows} labelled rows in the current window "
                             f"(< performance.min_labelled_rows {min_labelled_rows}): decay not assessed")
    if on_reference is None or on_current is None or math.isnan(on_reference) or math.isnan(on_current):
        return result(False, f"{metric} undefined on this window: decay not assessed")
    drop = (on_reference - on_current) if HIGHER_IS_BETTER[metric] else (on_current - on_reference)
    decayed = drop > max_decay
    return result(decayed, f"{metric} {on_reference:.4f} -> {on_current:.4f} (drop {drop:+.4f}, "
                           f"tolerance {max_decay})")


def decide(*, contract_passed: bool, contract_problems: list[str], drift: DriftResult | None,
           performance: PerformanceResult | None, labelled_rows: int, force_retrain: bool,
           champion_version: str | None, champion_trained_on_current: bool,
           min_labelled_rows: int = 1) -> Decision:
    """The verdict and its reason. Data drift triggers a retrain only with at least `min_labelled_rows`
    labelled current rows (performance.min_labelled_rows): a handful of feedback labels is no
    training set, and retraining on it every run would churn versions."""
    if not contract_passed:
        return Decision("blocked", "data contract failed: " + "; ".join(contract_problems), ["contract"])
    drift_text = describe_drift(drift) if drift is not None else ""
    if force_retrain:
        return Decision("retrain", "forced by force_retrain" + (f"; {drift_text}" if drift_text else ""),
                        ["forced"])
    if champion_version is None:
        return Decision("retrain", "no champion registered yet: bootstrap training", ["bootstrap"])
    if champion_trained_on_current:
        return Decision("skip", f"champion v{champion_version} was trained on this exact current window "
                                "(same sha256): nothing new to learn", [])
    triggers: list[str] = []
    reasons: list[str] = []
    if performance is not None and performance.decayed:
        triggers.append("performance_decay")
        reasons.append(f"performance decay of champion v{champion_version}: {performance.detail}")
    if drift is not None and drift.dataset_drift:
        if labelled_rows >= max(min_labelled_rows, 1):
            triggers.append("data_drift")
            reasons.append(f"data drift: {drift_text}")
        elif not triggers:
            labels = ("no labels" if not labelled_rows else
                      f"only {labelled_rows} labelled rows (< performance.min_labelled_rows {min_labelled_rows})")
            return Decision("skip", f"data drift ({drift_text}) but the current window has {labels} to "
                                    "retrain on: attach labels (feedback) and re-run", [])
    if triggers:
        if "data_drift" not in triggers and drift is not None:
            reasons.append(f"no dataset drift ({drift_text})")
        return Decision("retrain", "; ".join(reasons), triggers)
    if drift is None:
        return Decision("skip", "no current window to compare with the reference (set data.current or the "
                                "current_path param)", [])
    perf_text = performance.detail if performance is not None else "not assessed"
    if drift.dataset_drift is None:
        return Decision("skip", f"drift not assessed ({drift_text}) and no performance decay ({perf_text})", [])
    return Decision("skip", f"no dataset drift ({drift_text}) and no performance decay ({perf_text})", [])


def describe_drift(drift: DriftResult) -> str:
    """'2/9 features drifted (22%, threshold 20%): a, b' and what could not be judged."""
    drifted, insufficient = drift.drifted_features, drift.insufficient
    lacking = f"insufficient data for {', '.join(insufficient)}" if insufficient else ""
    if drift.drifted_share is None:
        return f"insufficient data: {', '.join(f'{n} ({drift.features[n].detail})' for n in insufficient)}"
    text = (f"{len(drifted)}/{drift.evaluated} features drifted ({drift.drifted_share:.0%}, "
            f"threshold {drift.drift_share_threshold:.0%})" + (f": {', '.join(drifted)}" if drifted else ""))
    return f"{text}; {lacking}" if lacking else text

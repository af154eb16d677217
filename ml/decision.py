"""The performance check of the champion and the retrain policy. Pure functions.

Decision rules, in order (the first that applies wins; `rule` names it, `inputs` holds every input,
the reason names every trigger found):

 1. contract failed                                        -> blocked          (rule contract)
 2. force_retrain                                          -> retrain          (forced)
 3. no champion                                            -> retrain          (bootstrap)
 4. champion already trained on this exact window          -> skip             (same_window)
 5. policy.max_retrains_per_week spent                     -> skip             (budget)
 6. performance decayed on labelled current data           -> retrain          (performance_decay)
 7. dataset drift, seen in k of the last n runs (k_of_n),
    with performance.min_labelled_rows new labelled rows:
      within policy.cooldown of the last retrain           -> skip             (cooldown)
      otherwise                                            -> retrain          (data_drift)
 8. the label-free estimate fell more than max_decay       -> skip             (estimated_decay: waiting for labels)
 9. dataset drift without enough labels                    -> skip             (drift_without_labels)
10. drift seen in fewer than k of the last n runs          -> skip             (debounced)
11. otherwise                                              -> skip             (no_change)
    ...unless drift.output.triggers_retrain (default false) and the champion's outputs moved (ml.drift.output),
    with enough labelled rows and outside the cooldown: rules 8, 10, 11 become -> retrain (output_drift)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ml.metrics import HIGHER_IS_BETTER
from ml.result import Result

if TYPE_CHECKING:
    from ml.config import ModelConfig
    from ml.drift import DriftResult

#: retrain | skip | blocked are the pipeline's; rollback | deploy record an operator's action (ml.pipeline).
Verdict = Literal["retrain", "skip", "blocked", "rollback", "deploy"]


@dataclass(frozen=True)
class PerformanceResult(Result):
    """The champion's metric: on its holdout, measured on the labelled current rows, and estimated
    without labels on the whole current window (ml.estimate)."""

    summary_fields = ("champion_version", "metric", "on_reference", "on_current", "decayed", "estimated",
                      "estimate_decayed", "detail")

    champion_version: str | None
    metric: str
    on_reference: float | None
    on_current: float | None
    decayed: bool
    labelled_rows: int
    max_decay: float
    detail: str
    #: label-free estimate of the metric on the current window, and whether it fell more than max_decay
    estimated: float | None = None
    estimate_decayed: bool = False
    #: the estimate used a calibration fitted at registration (else the raw probabilities)
    calibrated: bool = False
    #: estimated - measured, when both exist (how far to trust the estimate)
    estimate_error: float | None = None
    #: do the labelled rows still follow the champion's calibrated probabilities? (ml.estimate.calibration_test)
    calibration_p_value: float | None = None
    calibration_gap: float | None = None
    #: they do not: a significant gap of at least performance.max_calibration_gap (P(y|x) moved)
    miscalibrated: bool = False


@dataclass(frozen=True)
class PolicyInputs(Result):
    """What the retrain policy knows besides this run's checks (from the registry and the run history)."""

    new_labelled_rows: int = 0
    #: since the champion was registered, at the run's start
    hours_since_retrain: float | None = None
    #: dataset drift of this model's previous runs, newest first (None: not assessed)
    recent_drift: list[bool | None] = field(default_factory=list)
    retrains_last_week: int = 0


@dataclass(frozen=True)
class Decision(Result):
    summary_fields = ("decision", "reason", "triggers", "rule")

    decision: Verdict
    reason: str
    triggers: list[str] = field(default_factory=list)
    force_retrain: bool = False
    rule: str = ""
    #: every input the policy looked at (drift, performance, estimate, labels, cooldown, k-of-n, budget)
    inputs: dict[str, Any] = field(default_factory=dict)


def _drop(metric: str, reference: float, current: float) -> float:
    return (reference - current) if HIGHER_IS_BETTER[metric] else (current - reference)


def assess_performance(metric: str, champion_version: str | None, on_reference: float | None,
                       on_current: float | None, labelled_rows: int, min_labelled_rows: int,
                       max_decay: float, estimated: float | None = None, calibrated: bool = False,
                       calibration: tuple[float, float] | None = None, max_calibration_gap: float = 0.05,
                       confidence: float = 0.95) -> PerformanceResult:
    """Has the champion's metric on labelled current data fallen more than max_decay below its reference
    (holdout) value? Do those rows still follow its probabilities? And its label-free estimate?"""
    usable = [v for v in (on_reference, estimated) if v is not None and not math.isnan(v)]
    estimate_decayed = len(usable) == 2 and _drop(metric, on_reference, estimated) > max_decay  # type: ignore[arg-type]
    estimate_error = (estimated - on_current if estimated is not None and on_current is not None
                      and not math.isnan(on_current) else None)
    p_value, gap = calibration if calibration is not None else (None, None)
    miscalibrated = (labelled_rows >= min_labelled_rows and p_value is not None and p_value < 1 - confidence
                     and gap is not None and gap >= max_calibration_gap)

    def result(decayed: bool, detail: str) -> PerformanceResult:
        if miscalibrated:
            detail += (f"; the labels no longer follow its probabilities (calibration gap {gap:.3f} >= "
                       f"{max_calibration_gap}, p={p_value:.2g})")
        return PerformanceResult(champion_version, metric, on_reference, on_current, decayed or miscalibrated,
                                 labelled_rows, max_decay, detail, estimated, estimate_decayed, calibrated,
                                 estimate_error, p_value, gap, miscalibrated)

    if champion_version is None:
        return result(False, "no champion yet")
    estimate = (f"; estimated without labels {estimated:.4f}" + (" (calibrated)" if calibrated else "")
                if estimated is not None else "")
    if labelled_rows < min_labelled_rows:
        return result(False, f"{labelled_rows} labelled rows in the current window "
                             f"(< performance.min_labelled_rows {min_labelled_rows}): decay not assessed{estimate}")
    if on_reference is None or on_current is None or math.isnan(on_reference) or math.isnan(on_current):
        return result(False, f"{metric} undefined on this window: decay not assessed{estimate}")
    drop = _drop(metric, on_reference, on_current)
    return result(drop > max_decay, f"{metric} {on_reference:.4f} -> {on_current:.4f} (drop {drop:+.4f}, "
                                    f"tolerance {max_decay}){estimate}")


def describe_drift(drift: DriftResult) -> str:
    """'2/9 features drifted (22%, threshold 20%): a, b' and what could not be judged."""
    drifted, insufficient = drift.drifted_features, drift.insufficient
    if drift.drifted_share is None:
        return f"insufficient data: {', '.join(f'{n} ({drift.features[n].detail})' for n in insufficient)}"
    text = (f"{len(drifted)}/{drift.evaluated} features drifted ({drift.drifted_share:.0%}, "
            f"threshold {drift.drift_share_threshold:.0%})" + (f": {', '.join(drifted)}" if drifted else ""))
    return f"{text}; insufficient data for {', '.join(insufficient)}" if insufficient else text


def _inputs(drift: DriftResult | None, performance: PerformanceResult | None, labelled_rows: int,
            policy: PolicyInputs) -> dict[str, Any]:
    return {
        "dataset_drift": drift.dataset_drift if drift else None,
        "drifted_features": drift.drifted_features if drift else [],
        "decayed": performance.decayed if performance else None,
        "estimated": performance.estimated if performance else None,
        "estimate_decayed": performance.estimate_decayed if performance else None,
        "labelled_rows": labelled_rows, **policy.to_dict(),
    }


def decide(*, contract_passed: bool, contract_problems: list[str], drift: DriftResult | None,
           performance: PerformanceResult | None, labelled_rows: int, force_retrain: bool,
           champion_version: str | None, champion_trained_on_current: bool,
           min_labelled_rows: int = 1, config: ModelConfig | None = None,
           policy: PolicyInputs | None = None) -> Decision:
    """The verdict, the rule that fired, every input and the reason (module docstring: the rules)."""
    policy = policy or PolicyInputs(new_labelled_rows=labelled_rows)
    inputs = _inputs(drift, performance, labelled_rows, policy)

    def verdict(decision: Verdict, rule: str, reason: str, triggers: list[str] | None = None) -> Decision:
        return Decision(decision, reason, triggers or [], rule=rule, inputs=inputs)

    if not contract_passed:
        return verdict("blocked", "contract", "data contract failed: " + "; ".join(contract_problems), ["contract"])
    drift_text = describe_drift(drift) if drift is not None else ""
    if force_retrain:
        return verdict("retrain", "forced", "forced by force_retrain" + (f"; {drift_text}" if drift_text else ""),
                       ["forced"])
    if champion_version is None:
        return verdict("retrain", "bootstrap", "no champion registered yet: bootstrap training", ["bootstrap"])
    if champion_trained_on_current:
        return verdict("skip", "same_window", f"champion v{champion_version} was trained on this exact current "
                                              "window (same sha256): nothing new to learn")
    rules = config.policy if config is not None else None
    if rules is not None and rules.max_retrains_per_week is not None and \
            policy.retrains_last_week >= rules.max_retrains_per_week:
        return verdict("skip", "budget", f"retrain budget spent: {policy.retrains_last_week} retrains in the last 7 "
                                         f"days (policy.max_retrains_per_week {rules.max_retrains_per_week})"
                                         + _unanswered(performance, drift, drift_text))
    if performance is not None and performance.decayed:
        reason, triggers = f"performance decay of champion v{champion_version}: {performance.detail}", \
            ["performance_decay"]
        if drift is not None and drift.dataset_drift and policy.new_labelled_rows >= max(min_labelled_rows, 1):
            reason, triggers = f"{reason}; data drift: {drift_text}", [*triggers, "data_drift"]
        elif drift is not None and drift.dataset_drift is False:
            reason += f"; no dataset drift ({drift_text})"
        return verdict("retrain", "performance_decay", reason, triggers)
    decided = _drift_rules(drift, drift_text, performance, policy, rules, min_labelled_rows, verdict)
    return _output_rule(decided, drift, config, policy, min_labelled_rows, verdict)


def _output_rule(decided: Decision, drift: DriftResult | None, config: ModelConfig | None, policy: PolicyInputs,
                 min_labelled_rows: int, verdict: Any) -> Decision:
    """Rule 10b: with drift.output.triggers_retrain, a moved output distribution turns a skip for lack of a
    drift/decay trigger into a retrain (labels and the cooldown apply as to data drift)."""
    from ml.drift.output import describe

    output = drift.output if drift is not None else None
    if (decided.decision != "skip" or decided.rule not in ("no_change", "debounced", "estimated_decay")
            or config is None or not config.drift.output.triggers_retrain or output is None or not output.drifted):
        return decided
    if policy.new_labelled_rows < max(min_labelled_rows, 1):
        return decided
    cooldown = config.policy.cooldown_s / 3600
    if policy.hours_since_retrain is not None and policy.hours_since_retrain < cooldown:
        return decided
    return verdict("retrain", "output_drift", f"output drift: {describe(output)}", ["output_drift"])


def _unanswered(performance: PerformanceResult | None, drift: DriftResult | None, drift_text: str) -> str:
    seen = [f"performance decay ({performance.detail})" if performance is not None and performance.decayed else "",
            f"data drift ({drift_text})" if drift is not None and drift.dataset_drift else ""]
    seen = [s for s in seen if s]
    return f"; not acted on: {'; '.join(seen)}" if seen else ""


def _drift_rules(drift: DriftResult | None, drift_text: str, performance: PerformanceResult | None,
                 policy: PolicyInputs, rules: Any, min_labelled_rows: int, verdict: Any) -> Decision:
    """Rules 7-11: drift (debounced, cooled down, with labels), the label-free estimate, no change."""
    k, n = rules.k_of_n if rules is not None and rules.k_of_n else (1, 1)
    seen = [bool(drift is not None and drift.dataset_drift), *(bool(d) for d in policy.recent_drift[: n - 1])]
    confirmed = sum(seen) >= k
    enough_labels = policy.new_labelled_rows >= max(min_labelled_rows, 1)
    if drift is not None and drift.dataset_drift and confirmed and enough_labels:
        cooldown = rules.cooldown_s / 3600 if rules is not None else 0.0
        if policy.hours_since_retrain is not None and policy.hours_since_retrain < cooldown:
            return verdict("skip", "cooldown", f"data drift ({drift_text}) within policy.cooldown "
                                               f"{rules.cooldown} of the last retrain "
                                               f"({policy.hours_since_retrain:.1f} h ago)")
        return verdict("retrain", "data_drift", f"data drift: {drift_text}", ["data_drift"])
    perf_text = performance.detail if performance is not None else "not assessed"
    if performance is not None and performance.estimate_decayed and not enough_labels:
        return verdict("skip", "estimated_decay",
                       f"decay estimated without labels: {performance.metric} {performance.on_reference:.4f} -> "
                       f"about {performance.estimated:.4f}; waiting for labels (attach them through /feedback) "
                       f"to retrain" + (f"; {drift_text}" if drift_text else ""))
    if drift is not None and drift.dataset_drift and not enough_labels:
        labels = ("no labels" if not policy.new_labelled_rows else
                  f"only {policy.new_labelled_rows} labelled rows (< performance.min_labelled_rows "
                  f"{min_labelled_rows})")
        return verdict("skip", "drift_without_labels", f"data drift ({drift_text}) but the current window has "
                                                       f"{labels} to retrain on: attach labels (feedback) and re-run")
    if drift is not None and drift.dataset_drift:
        return verdict("skip", "debounced", f"data drift ({drift_text}) in {sum(seen)} of the last {len(seen)} runs; "
                                            f"policy.k_of_n asks for {k} of {n}")
    if drift is None:
        return verdict("skip", "no_change", "no current window to compare with the reference (set data.current or "
                                            "the current_path param)")
    if drift.dataset_drift is None:
        return verdict("skip", "no_change", f"drift not assessed ({drift_text}) and no performance decay "
                                            f"({perf_text})")
    return verdict("skip", "no_change", f"no dataset drift ({drift_text}) and no performance decay ({perf_text})")

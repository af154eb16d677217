"""Drift detection: is the current window's feature distribution the reference's?

Every column gets (ml.drift.significance) a significance test (KS for continuous columns, chi-squared
homogeneity for categorical ones), its p-value adjusted with Benjamini-Hochberg across the columns, an
effect size, and the statistic Evidently would report for it (`method`, `score`, `threshold`:
ml.drift.statistics, Evidently's definitions computed with numpy on column profiles). Which of them
decides is `drift.decision`:

    fdr        (default) drifted = adjusted p <= drift.fdr and effect size >= drift.min_effect
    threshold  drifted = the method's own rule (Evidently's: ks p <= 0.05, wasserstein >= 0.1, ...)

A column with fewer than `drift.min_rows` values in either window, or constant in both, is
"insufficient data": never "drifted", never "stable". The dataset drifts when the drifted share of the
evaluated columns reaches `drift.drift_share`; with no column evaluated it is insufficient data too.

The reference enters as a `ReferenceProfile` (ml.drift.profile), built once per reference window and
reused; only the current window is read per run. Evidently itself renders the HTML report, on a bounded
sample, in a step of its own beside the decision (ml.drift.report).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ml.data import model_frame
from ml.drift.output import OutputDrift, Status
from ml.result import Result

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig
    from ml.drift.profile import ColumnProfile, ReferenceProfile

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FeatureDrift(Result):
    """One column: the reported statistic (`method`, `score`, `threshold`), the test, and the verdict."""

    method: str
    score: float | None
    threshold: float
    drifted: bool | None
    status: Status = "stable"
    test: str | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    effect_method: str | None = None
    effect: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class DriftResult(Result):
    """The drift step's result. `skipped` (with no features) when there was no current window to compare."""

    summary_fields = ("dataset_drift", "drifted_share", "drift_share_threshold", "skipped", "decision", "output")

    dataset_drift: bool | None
    drifted_share: float | None
    drift_share_threshold: float
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    #: what the current window was compared with (drift.reference), in words, and that window's sha256
    compared_with: str | None = None
    reference_sha256: str | None = None
    skipped: str | None = None
    decision: str = "fdr"
    fdr: float = 0.05
    min_effect: float = 0.0
    #: the champion's output (score) distribution, current window vs its holdout (ml.drift.output);
    #: None without a champion or with drift.output.enabled false
    output: OutputDrift | None = None

    @classmethod
    def not_run(cls, reason: str, drift_share_threshold: float) -> DriftResult:
        return cls(dataset_drift=None, drifted_share=None, drift_share_threshold=drift_share_threshold,
                   skipped=reason)

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def evaluated(self) -> int:
        """Columns with enough data to judge."""
        return sum(f.drifted is not None for f in self.features.values())

    @property
    def insufficient(self) -> list[str]:
        return [name for name, f in self.features.items() if f.status == "insufficient_data"]


def available_methods() -> list[str]:
    """Names `drift.method` / `drift.columns.<col>.method` accept."""
    from ml.drift.statistics import available_methods as names

    return names()


def check_methods(config: ModelConfig) -> None:
    """Every configured method exists and fits its columns' type (ConfigError naming the problem)."""
    from ml.drift.statistics import get_statistic

    dc = config.drift
    for column in config.feature_columns:
        kind = "numeric" if column in config.features.numeric else "categorical"
        rule = dc.columns.get(column)
        name = (rule.method if rule and rule.method else None) or dc.method
        if name is not None:
            get_statistic(name, kind)


def _column(config: ModelConfig, name: str, reference: ColumnProfile, current: ColumnProfile) -> FeatureDrift:
    """Everything about one column except the multiple-testing verdict."""
    from ml.drift.significance import column_test, effect_size
    from ml.drift.statistics import default_statistic, get_statistic

    dc = config.drift
    rule = dc.columns.get(name)
    method = (rule.method if rule and rule.method else None) or dc.method
    statistic = get_statistic(method) if method else default_statistic(reference, current)
    threshold = (rule.threshold if rule and rule.threshold else None) or dc.threshold or statistic.default_threshold
    too_few = min(reference.n, current.n) < dc.min_rows
    if too_few or _same_values(reference, current):
        detail = (f"{current.n} current / {reference.n} reference values (drift.min_rows {dc.min_rows})"
                  if too_few else "constant in both windows")
        return FeatureDrift(statistic.name, None, threshold, None, "insufficient_data", detail=detail)
    score = statistic.compute(reference, current)
    test, p_value = column_test(reference, current)
    effect_method, effect = effect_size(reference, current)
    drifted = statistic.drifted(score, threshold)
    return FeatureDrift(statistic.name, score, threshold, drifted, "drifted" if drifted else "stable", test=test,
                        p_value=p_value, effect_method=effect_method, effect=effect)


def _same_values(reference: ColumnProfile, current: ColumnProfile) -> bool:
    """Constant in both windows, at the same value: nothing to compare."""
    return (max(reference.n_unique, current.n_unique) < 2 and len(reference.points) == len(current.points) == 1
            and reference.points[0] == current.points[0])


def _decide_fdr(config: ModelConfig, features: dict[str, FeatureDrift]) -> dict[str, FeatureDrift]:
    """Benjamini-Hochberg over the evaluated columns' p-values, then the effect-size floor."""
    from dataclasses import replace

    from ml.drift.significance import adjust

    dc = config.drift
    tested = [n for n, f in features.items() if f.p_value is not None]
    adjusted = dict(zip(tested, adjust([features[n].p_value for n in tested]), strict=True))  # type: ignore[misc]
    out = {}
    for name, f in features.items():
        if name not in adjusted:
            out[name] = f
            continue
        significant = adjusted[name] <= dc.fdr
        drifted = significant and (f.effect or 0.0) >= dc.min_effect
        detail = "" if drifted or not significant else f"significant, but effect {f.effect:.3g} < min_effect"
        out[name] = replace(f, p_adjusted=adjusted[name], drifted=drifted, status="drifted" if drifted else "stable",
                            detail=detail)
    return out


def detect_drift(config: ModelConfig, reference: pd.DataFrame | ReferenceProfile,
                 current: pd.DataFrame | ReferenceProfile) -> DriftResult:
    """Compare the current window with a reference (each given as raw rows or as its profile)."""
    from ml.drift.profile import ReferenceProfile

    check_methods(config)
    dc = config.drift
    reference, current = (w if isinstance(w, ReferenceProfile) else
                          ReferenceProfile.build(model_frame(w, config), config, sha256="", seed=config.training.seed)
                          for w in (reference, current))
    log.info("drift: %d reference rows vs %d current rows, %d features", reference.rows, current.rows,
             len(config.feature_columns))
    features = {c: _column(config, c, reference.columns[c], current.columns[c]) for c in config.feature_columns}
    if dc.decision == "fdr":
        features = _decide_fdr(config, features)
    evaluated = [f for f in features.values() if f.drifted is not None]
    share = sum(bool(f.drifted) for f in evaluated) / len(evaluated) if evaluated else None
    return DriftResult(dataset_drift=None if share is None else share >= dc.drift_share, drifted_share=share,
                       drift_share_threshold=dc.drift_share, features=features, decision=dc.decision, fdr=dc.fdr,
                       min_effect=dc.min_effect if dc.decision == "fdr" else 0.0)

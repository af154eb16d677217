"""What decides drift by default: a significance test per column, with the false discovery rate controlled
across columns, and an effect size beside it.

    numeric columns (more than 5 distinct values)  two-sample Kolmogorov-Smirnov test;
                                                   effect size: Wasserstein distance normed by the reference std
    categorical columns (or numeric with few)      chi-squared test of homogeneity (2 x k table, categories
                                                   with expected counts under 5 pooled); effect: Jensen-Shannon

The p-values of all columns go through Benjamini-Hochberg (scipy.stats.false_discovery_control) at
`drift.fdr`; a column drifts when its adjusted p-value is at most `drift.fdr` and its effect size reaches
`drift.min_effect`. A test, unlike an effect-size threshold alone, accounts for how few rows a window
has: sampling noise in a 250-row window against a 10,000-row reference crosses Evidently's 0.1 normed
Wasserstein threshold often, while a KS test at 5% flags such a window 5% of the time, and BH keeps the
chance that any of k stable columns is flagged near 5% too (instead of about 1 - 0.95^k).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile

#: Distinct values above which a numeric column is tested as continuous (Evidently's cut-off too).
CONTINUOUS_VALUES = 5
#: Expected count below which chi-squared is unreliable: such categories are pooled.
MIN_EXPECTED = 5.0


def is_continuous(reference: ColumnProfile, current: ColumnProfile) -> bool:
    from ml.drift.empirical import union_unique

    return reference.kind == "numeric" and union_unique(reference, current) > CONTINUOUS_VALUES


def column_test(reference: ColumnProfile, current: ColumnProfile) -> tuple[str, float]:
    """(test name, p-value) of 'both windows come from the same distribution'."""
    from ml.drift.statistics.ks import ks_p_value

    if is_continuous(reference, current):
        return "ks", ks_p_value(reference, current)
    return "chi2", homogeneity_p_value(reference, current)


def effect_size(reference: ColumnProfile, current: ColumnProfile) -> tuple[str, float]:
    """(statistic, value): normed Wasserstein for continuous columns, Jensen-Shannon distance otherwise."""
    from ml.drift.statistics.jensenshannon import jensenshannon
    from ml.drift.statistics.wasserstein import normed_wasserstein

    if is_continuous(reference, current):
        return "wasserstein", normed_wasserstein(reference, current)
    return "jensenshannon", jensenshannon(reference, current)


def homogeneity_p_value(reference: ColumnProfile, current: ColumnProfile) -> float:
    """Chi-squared test of homogeneity of the two windows' value counts (both are samples, unlike
    Evidently's goodness-of-fit `chisquare`, which takes the reference shares as exact)."""
    from scipy import stats

    from ml.drift.empirical import count_table

    _, ref, cur = count_table(reference, current)
    table = np.vstack([ref, cur])
    expected = table.sum(axis=0) * (table.sum(axis=1, keepdims=True) / table.sum())
    rare = expected.min(axis=0) < MIN_EXPECTED
    if rare.any():
        table = np.column_stack([table[:, ~rare], table[:, rare].sum(axis=1)])
        if table[:, -1].sum() * min(table.sum(axis=1)) / table.sum() < MIN_EXPECTED and table.shape[1] > 2:
            table = np.column_stack([table[:, :-2], table[:, -2:].sum(axis=1)])  # still rare: into a neighbour
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table).pvalue)


def adjust(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (same order)."""
    from scipy import stats

    if not p_values:
        return []
    return [float(p) for p in stats.false_discovery_control(np.asarray(p_values, dtype=float), method="bh")]

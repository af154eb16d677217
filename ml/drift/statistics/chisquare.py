"""`chisquare`: chi-squared goodness of fit of the current counts to the reference shares (any column
with few values; drift when p < threshold, default 0.05), as Evidently computes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml.drift.statistics.registry import Statistic, register_statistic

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile


def chisquare(reference: ColumnProfile, current: ColumnProfile) -> float:
    from scipy import stats

    from ml.drift.empirical import count_table

    _, ref, cur = count_table(reference, current)
    expected = ref * current.n / reference.n
    if (expected == 0).any():  # a value the reference never had: infinitely unlikely under it
        return 0.0
    return float(stats.chisquare(cur, expected).pvalue)


register_statistic(Statistic("chisquare", "chi-square p_value", frozenset({"numeric", "categorical"}), 0.05, True,
                             chisquare))

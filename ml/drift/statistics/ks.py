"""`ks`: two-sample Kolmogorov-Smirnov p-value (numeric; drift when p <= threshold, default 0.05)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml.drift.statistics.registry import Statistic, register_statistic

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile

#: scipy's ks_2samp computes an exact p-value up to this many values per window, else the asymptotic one
EXACT_MAX = 10_000


def ks_p_value(reference: ColumnProfile, current: ColumnProfile) -> float:
    """scipy.stats.ks_2samp(reference, current).pvalue: on the raw values when both windows are small and
    exact (the exact distribution), else Smirnov's asymptotic formula on the profiles' statistic."""
    import numpy as np
    from scipy import stats

    from ml.drift.empirical import ks_statistic

    if reference.exact and current.exact and max(reference.n, current.n) <= EXACT_MAX:
        return float(stats.ks_2samp(reference.values(), current.values()).pvalue)
    m, n = sorted([float(reference.n), float(current.n)], reverse=True)
    return float(np.clip(stats.kstwo.sf(ks_statistic(reference, current), np.round(m * n / (m + n))), 0, 1))


register_statistic(Statistic("ks", "K-S p_value", frozenset({"numeric"}), 0.05, True, ks_p_value, inclusive=True))

"""`z`: two-proportion z-test (columns with at most two values; drift when p < threshold, default 0.05)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml.drift.statistics.registry import Statistic, register_statistic

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile


def z_test(reference: ColumnProfile, current: ColumnProfile) -> float:
    import numpy as np
    from scipy import stats

    from ml.drift.empirical import count_table

    keys, ref, cur = count_table(reference, current)
    if len(keys) == 1:  # the same single value in both windows
        return 1.0
    # the share of values other than the first (sorted) key, in each window (Evidently's encoding)
    p1, p2 = 1 - ref[0] / reference.n, 1 - cur[0] / current.n
    pooled = (p1 * reference.n + p2 * current.n) / (reference.n + current.n)
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1.0 / reference.n + 1.0 / current.n))
    return float(2 * (1 - stats.norm.cdf(np.abs(z))))


register_statistic(Statistic("z", "Z-test p_value", frozenset({"numeric", "categorical"}), 0.05, True, z_test))

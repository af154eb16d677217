"""`jensenshannon`: Jensen-Shannon distance of the binned shares (any column; drift when >= 0.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml.drift.statistics.registry import Statistic, register_statistic

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile


def jensenshannon(reference: ColumnProfile, current: ColumnProfile) -> float:
    from scipy.spatial import distance

    from ml.drift.empirical import binned_shares

    ref, cur = binned_shares(reference, current, fill_zeroes=False)
    return float(distance.jensenshannon(ref, cur))


register_statistic(Statistic("jensenshannon", "Jensen-Shannon distance", frozenset({"numeric", "categorical"}), 0.1,
                             False, jensenshannon))

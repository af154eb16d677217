"""`psi`: population stability index of the binned shares (any column; drift when >= 0.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml.drift.statistics.registry import Statistic, register_statistic

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile


def psi(reference: ColumnProfile, current: ColumnProfile) -> float:
    import numpy as np

    from ml.drift.empirical import binned_shares

    ref, cur = binned_shares(reference, current, fill_zeroes=True)
    return float(np.sum((ref - cur) * np.log(ref / cur)))


register_statistic(Statistic("psi", "PSI", frozenset({"numeric", "categorical"}), 0.1, False, psi))

"""`wasserstein`: first Wasserstein distance normed by the reference's std (numeric; drift when >= 0.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ml.drift.statistics.registry import Statistic, register_statistic

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile


def normed_wasserstein(reference: ColumnProfile, current: ColumnProfile) -> float:
    from ml.drift.empirical import wasserstein

    return wasserstein(reference, current) / max(reference.std, 0.001)


register_statistic(Statistic("wasserstein", "Wasserstein distance (normed)", frozenset({"numeric"}), 0.1, False,
                             normed_wasserstein))

"""The registry of drift statistics: `Statistic`, `register_statistic`, lookups by name (ml.drift.statistics)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ml.errors import ConfigError

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile

Compute = Callable[["ColumnProfile", "ColumnProfile"], float]


@dataclass(frozen=True)
class Statistic:
    name: str
    #: what Evidently's report calls it (and what the run record's `method` says)
    display_name: str
    kinds: frozenset[str]
    default_threshold: float
    #: p-values drift when small (`p <= threshold` for ks, `<` for the others, as Evidently), distances when large
    p_value: bool
    compute: Compute
    inclusive: bool = False

    def drifted(self, score: float, threshold: float) -> bool:
        if self.p_value:
            return score <= threshold if self.inclusive else score < threshold
        return score >= threshold


_REGISTRY: dict[str, Statistic] = {}


def register_statistic(statistic: Statistic) -> Statistic:
    _REGISTRY[statistic.name] = statistic
    return statistic


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_statistic(name: str, kind: str | None = None) -> Statistic:
    if name not in _REGISTRY:
        raise ConfigError(f"drift method '{name}' unknown; available: {', '.join(sorted(_REGISTRY))}")
    statistic = _REGISTRY[name]
    if kind is not None and kind not in statistic.kinds:
        raise ConfigError(f"drift method '{name}' does not apply to {kind} columns "
                          f"(it takes {', '.join(sorted(statistic.kinds))})")
    return statistic


def default_statistic(reference: ColumnProfile, current: ColumnProfile) -> Statistic:
    """Evidently's default per column (legacy stattests registry `_get_default_stattest`)."""
    from ml.drift.empirical import union_unique

    values = union_unique(reference, current)
    if reference.n <= 1000:
        if reference.kind == "numeric" and values > 5:
            return _REGISTRY["ks"]
        return _REGISTRY["chisquare"] if values > 2 else _REGISTRY["z"]
    if reference.kind == "numeric" and values > 5:
        return _REGISTRY["wasserstein"]
    return _REGISTRY["jensenshannon"]

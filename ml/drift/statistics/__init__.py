"""Drift statistics by name: one small module each, registered here, computed on column profiles.

Each statistic is Evidently's (same name, definition, default threshold and drift rule, so a config
written for Evidently means the same here) and computed with numpy on `ml.drift.profile` profiles:
`ks`, `chisquare`, `z`, `wasserstein` (normed), `jensenshannon`, `psi`. `default_statistic` is Evidently's
choice per column (KS / chi-squared / z below 1,000 reference rows, normed Wasserstein / Jensen-Shannon
above). Register another with `register_statistic(Statistic(...))`; an unknown name is a ConfigError
listing the available ones.
"""

from ml.drift.statistics import chisquare, jensenshannon, ks, psi, wasserstein, z  # noqa: F401  (they register)
from ml.drift.statistics.registry import (
    Statistic,
    available_methods,
    default_statistic,
    get_statistic,
    register_statistic,
)

__all__ = ["Statistic", "available_methods", "default_statistic", "get_statistic", "register_statistic"]

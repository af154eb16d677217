"""Estimator factories, by the name used in `model.estimator`, and what `model.estimator: auto` may try.

Each entry builds an unfitted scikit-learn-compatible classifier from `model.params` (over the entry's
`defaults`) and the run's seed. Register another with `@register_estimator("name", scale=...,
defaults=..., grid=..., bound=...)`; an unknown name is a ConfigError listing the available ones.
Only estimators that convert to ONNX belong here (the ONNX model is what is served). `scale=False` for
tree models: they do not need it, and scaling in float64 (sklearn) vs float32 (onnxruntime) moves
values across split thresholds, breaking ONNX parity. `grid` lists the settings the `auto` search
tries (an entry without one is never searched).

`bound` keeps a tree ensemble within the size gate whatever the data size: from the number of trees,
the classes and the ONNX bytes it may use, it caps the leaves per tree, and it caps the rows each tree
sees on large data (the fit time of a tree grows faster than its rows). A bound only fills keys the user
did not set, and only when it can bind, so small data trains exactly as without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml.errors import ConfigError, TrainingError

#: The name of the candidate search (ml.search); not an entry of the registry.
AUTO = "auto"
#: The rows a bounded random forest tree is grown on (`max_samples`) once the data is larger.
MAX_TREE_ROWS = 20_000
#: Fewer leaves per tree than this and a forest stops being worth its trees: the bound refuses instead.
MIN_FOREST_LEAVES = 8


@dataclass(frozen=True)
class FitContext:
    """What a bound depends on: the rows the estimator is fitted on, the classes, the ONNX size it may use."""

    rows: int
    classes: int
    max_onnx_bytes: float


Factory = Callable[[dict[str, Any], int], Any]
Bound = Callable[[dict[str, Any], FitContext], dict[str, Any]]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    scale: bool
    defaults: dict[str, Any]
    grid: tuple[dict[str, Any], ...]
    bound: Bound | None


_REGISTRY: dict[str, _Entry] = {}


class SizeBudgetError(TrainingError):
    """The estimator's settings cannot produce a model within the size gate, whatever it learns."""


def register_estimator(name: str, *, scale: bool = True, defaults: dict[str, Any] | None = None,
                       grid: list[dict[str, Any]] | None = None,
                       bound: Bound | None = None) -> Callable[[Factory], Factory]:
    if name == AUTO:
        raise ValueError(f"'{AUTO}' names the candidate search, not an estimator")

    def wrap(factory: Factory) -> Factory:
        _REGISTRY[name] = _Entry(factory, scale, dict(defaults or {}), tuple(grid or ()), bound)
        return factory

    return wrap


def wants_scaling(name: str) -> bool:
    entry = _REGISTRY.get(name)
    return entry.scale if entry is not None else True


def available_estimators() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ConfigError(f"model.estimator: unknown estimator '{name}'; available: "
                          f"{[AUTO, *available_estimators()]}")
    return _REGISTRY[name]


def search_space(names: list[str] | None = None) -> list[tuple[str, int, dict[str, Any]]]:
    """(estimator, 1-based setting number, params) of every grid setting, round-robin over estimators in
    registration order (cheapest first), so a search cut short by its budget still tried each one once."""
    searchable = [n for n, e in _REGISTRY.items() if e.grid]
    for name in names or []:
        if name not in searchable:
            known = "has no search grid" if name in _REGISTRY else "is not a registered estimator"
            raise ConfigError(f"model.search.estimators: '{name}' {known}; searchable: {searchable}")
    chosen = names if names is not None else searchable
    depth = max((len(_REGISTRY[n].grid) for n in chosen), default=0)
    return [(name, i + 1, dict(_REGISTRY[name].grid[i])) for i in range(depth) for name in chosen
            if i < len(_REGISTRY[name].grid)]


def effective_params(name: str, params: dict[str, Any], context: FitContext) -> dict[str, Any]:
    """The parameters the estimator is built with: its defaults, the user's, then its bound's limits for
    the keys the user left open."""
    entry = _entry(name)
    merged = {**entry.defaults, **params}
    if entry.bound is not None:
        merged |= {k: v for k, v in entry.bound(merged, context).items() if k not in params}
    return merged


def build_estimator(name: str, params: dict[str, Any], seed: int) -> Any:
    """An unfitted classifier from the entry's defaults and `params`; bad names or parameters are
    ConfigErrors naming `model.*`."""
    entry = _entry(name)
    try:
        return entry.factory({**entry.defaults, **params}, seed)
    except TypeError as exc:
        raise ConfigError(f"model.params: invalid parameters for '{name}': {exc}") from None


def onnx_bytes_per_node(classes: int) -> float:
    """ONNX bytes per tree node (skl2onnx TreeEnsembleClassifier; measured: 39 B with 2 classes, 51 B with
    3, a leaf carrying one weight per class). An estimate for bounds: the size gate measures the file."""
    return 15.0 + 12.0 * max(classes, 2)


def _leaves_within(max_bytes: float, trees: int, bytes_per_node: float) -> int:
    """Leaves per tree so that `trees` trees of 2 * leaves - 1 nodes stay within `max_bytes`."""
    return int((max_bytes / bytes_per_node / trees + 1) // 2)


def _min_leaf_rows(params: dict[str, Any], rows: int, key: str) -> int:
    value = params.get(key, 1)
    return max(1, math.ceil(value * rows) if isinstance(value, float) else int(value))


def _distinct_rows(params: dict[str, Any], rows: int) -> float:
    """The distinct rows a forest's tree grows on: a bootstrap of m draws from n rows holds about
    n * (1 - exp(-m / n)) of them (63% for m = n), and a leaf needs min_samples_leaf distinct rows."""
    if not params.get("bootstrap", True):
        return rows
    draws = params.get("max_samples")
    draws = rows if draws is None else draws * rows if isinstance(draws, float) else min(int(draws), rows)
    return rows * (1 - math.exp(-draws / rows)) if rows else 0.0


def _forest_bound(params: dict[str, Any], context: FitContext) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if params.get("bootstrap", True) and params.get("max_samples") is None and context.rows > MAX_TREE_ROWS:
        limits["max_samples"] = MAX_TREE_ROWS
    distinct = _distinct_rows({**params, **limits}, context.rows)
    trees = int(params["n_estimators"])
    leaves = _leaves_within(context.max_onnx_bytes, trees, onnx_bytes_per_node(context.classes))
    if leaves < MIN_FOREST_LEAVES:
        needed = trees * (2 * MIN_FOREST_LEAVES - 1) * onnx_bytes_per_node(context.classes) / 1e6
        raise SizeBudgetError(f"{trees} trees of at least {MIN_FOREST_LEAVES} leaves need about {needed:.2f} MB "
                              f"of ONNX, more than the {context.max_onnx_bytes / 1e6:.2f} MB trees may use")
    # Only where a tree could outgrow it: a cap that cannot bind would still change how trees grow (best first)
    if distinct / _min_leaf_rows(params, round(distinct), "min_samples_leaf") > leaves:
        limits["max_leaf_nodes"] = leaves
    return limits


def _boosting_bound(params: dict[str, Any], context: FitContext) -> dict[str, Any]:
    trees = int(params["n_estimators"]) * (context.classes if context.classes > 2 else 1)
    leaves = _leaves_within(context.max_onnx_bytes, trees, onnx_bytes_per_node(2))  # one weight per leaf
    if leaves < 2:
        raise SizeBudgetError(f"{trees} boosted trees need more than the {context.max_onnx_bytes / 1e6:.2f} MB "
                              "of ONNX trees may use")
    wanted = int(params.get("num_leaves", 31))
    return {"num_leaves": leaves} if leaves < wanted else {}


@register_estimator("logistic_regression", defaults={"max_iter": 2000, "class_weight": "balanced"},
                    grid=[{"C": 1.0}, {"C": 0.1}])
def _logistic_regression(params: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(random_state=seed, **params)


@register_estimator("random_forest", scale=False, bound=_forest_bound,
                    defaults={"n_estimators": 200, "min_samples_leaf": 5, "class_weight": "balanced_subsample",
                              "n_jobs": -1},
                    grid=[{"n_estimators": 100, "min_samples_leaf": 2},
                          {"n_estimators": 100, "min_samples_leaf": 10}])
def _random_forest(params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(random_state=seed, **params)


@register_estimator("lightgbm", scale=False, bound=_boosting_bound,
                    defaults={"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31,
                              "class_weight": "balanced", "deterministic": True, "force_row_wise": True,
                              "n_jobs": 1, "verbose": -1},
                    grid=[{"n_estimators": 100, "learning_rate": 0.1, "num_leaves": 15},
                          {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 31}])
def _lightgbm(params: dict[str, Any], seed: int) -> Any:
    """LightGBM's gradient boosting (ONNX through onnxmltools, ml.export): scikit-learn's
    HistGradientBoosting does not convert with skl2onnx 1.20 under numpy 2.4, and its
    GradientBoostingClassifier takes a minute on 170k rows where LightGBM takes seconds. One thread by
    default: OpenMP threads spinning next to other work on a small machine made fits up to 5x slower."""
    from lightgbm import LGBMClassifier

    return LGBMClassifier(random_state=seed, **params)

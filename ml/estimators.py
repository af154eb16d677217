"""Estimator factories, by the name used in `model.estimator`.

Each factory builds an unfitted scikit-learn classifier from `model.params` and the run's seed.
Register another with `@register_estimator("name", scale=...)`; an unknown name is a ConfigError
listing the available ones. Only estimators skl2onnx converts belong here (the ONNX model is what is
served). `scale=False` for tree models: they do not need it, and scaling in float64 (sklearn) vs
float32 (onnxruntime) moves values across split thresholds, breaking ONNX parity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ml.errors import ConfigError

Factory = Callable[[dict[str, Any], int], Any]
_REGISTRY: dict[str, Factory] = {}
_SCALED: dict[str, bool] = {}


def register_estimator(name: str, *, scale: bool = True) -> Callable[[Factory], Factory]:
    def wrap(factory: Factory) -> Factory:
        _REGISTRY[name] = factory
        _SCALED[name] = scale
        return factory

    return wrap


def wants_scaling(name: str) -> bool:
    return _SCALED.get(name, True)


def available_estimators() -> list[str]:
    return sorted(_REGISTRY)


def build_estimator(name: str, params: dict[str, Any], seed: int) -> Any:
    """An unfitted classifier; bad names or parameters are ConfigErrors naming `model.*`."""
    if name not in _REGISTRY:
        raise ConfigError(f"model.estimator: unknown estimator '{name}'; available: {available_estimators()}")
    try:
        return _REGISTRY[name](dict(params), seed)
    except TypeError as exc:
        raise ConfigError(f"model.params: invalid parameters for '{name}': {exc}") from None


@register_estimator("logistic_regression")
def _logistic_regression(params: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    params.setdefault("max_iter", 2000)
    params.setdefault("class_weight", "balanced")
    return LogisticRegression(random_state=seed, **params)


@register_estimator("random_forest", scale=False)
def _random_forest(params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    params.setdefault("n_estimators", 200)
    params.setdefault("min_samples_leaf", 5)
    params.setdefault("class_weight", "balanced_subsample")
    params.setdefault("n_jobs", -1)
    return RandomForestClassifier(random_state=seed, **params)

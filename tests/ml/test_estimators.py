"""The estimator registry: defaults, the search space, and the bounds that keep tree ensembles within the
size gate whatever the data size (pure functions, known values; one real export checks the estimate)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.config import parse_config
from ml.errors import ConfigError
from ml.estimators import (
    MAX_TREE_ROWS,
    FitContext,
    SizeBudgetError,
    effective_params,
    onnx_bytes_per_node,
    search_space,
)

BUDGET = 50e6 * 0.25  # gates.max_size_mb 50 (the default) x ml.train.TREE_SIZE_SHARE


def test_search_space_is_round_robin_over_estimators_cheapest_first():
    names = [f"{name}_{number}" for name, number, _ in search_space()]
    assert names[:3] == ["logistic_regression_1", "random_forest_1", "lightgbm_1"]
    assert names[3:6] == ["logistic_regression_2", "random_forest_2", "lightgbm_2"]
    assert [n for n, _, _ in search_space(["lightgbm", "logistic_regression"])] == \
        ["lightgbm", "logistic_regression", "lightgbm", "logistic_regression"]
    with pytest.raises(ConfigError, match="model.search.estimators: 'xgboost' is not a registered estimator; "
                                          "searchable: \\['logistic_regression', 'random_forest', 'lightgbm'\\]"):
        search_space(["xgboost"])


def test_a_forest_on_large_data_is_bounded_to_the_size_budget():
    params = effective_params("random_forest", {}, FitContext(rows=170_000, classes=2, max_onnx_bytes=BUDGET))
    # 200 trees (the default) x (2 * leaves - 1) nodes x 39 B must stay within 12.5 MB
    leaves = params["max_leaf_nodes"]
    assert leaves == int((BUDGET / 39.0 / 200 + 1) // 2) == 801
    assert 200 * (2 * leaves - 1) * onnx_bytes_per_node(2) <= BUDGET
    assert params["max_samples"] == MAX_TREE_ROWS  # each tree grows on 20k rows, not 170k
    assert params["n_estimators"] == 200 and params["min_samples_leaf"] == 5


def test_bounds_leave_small_data_and_the_users_keys_alone():
    small = effective_params("random_forest", {"n_estimators": 40},
                             FitContext(rows=3_000, classes=2, max_onnx_bytes=BUDGET))
    # 3,000 rows / min_samples_leaf 5 = 600 leaves at most: the 1,600-leaf cap cannot bind, so it is not set
    assert "max_leaf_nodes" not in small and "max_samples" not in small
    assert small == {"n_estimators": 40, "min_samples_leaf": 5, "class_weight": "balanced_subsample", "n_jobs": -1}
    # the default forest (200 trees, 801 leaves at most): a bootstrap of n rows holds 63% of them, a leaf >= 5
    edge = {n: effective_params("random_forest", {}, FitContext(rows=n, classes=2, max_onnx_bytes=BUDGET))
            for n in (6_300, 6_400)}
    assert "max_leaf_nodes" not in edge[6_300] and edge[6_400]["max_leaf_nodes"] == 801
    mine = effective_params("random_forest", {"max_leaf_nodes": None, "max_samples": 0.5},
                            FitContext(rows=170_000, classes=2, max_onnx_bytes=BUDGET))
    assert mine["max_leaf_nodes"] is None and mine["max_samples"] == 0.5


def test_multiclass_leaves_weigh_more():
    binary = effective_params("random_forest", {}, FitContext(rows=170_000, classes=2, max_onnx_bytes=BUDGET))
    five = effective_params("random_forest", {}, FitContext(rows=170_000, classes=5, max_onnx_bytes=BUDGET))
    assert five["max_leaf_nodes"] == int((BUDGET / onnx_bytes_per_node(5) / 200 + 1) // 2) < binary["max_leaf_nodes"]
    boosted = effective_params("lightgbm", {"n_estimators": 2000}, FitContext(rows=10**6, classes=10,
                                                                               max_onnx_bytes=BUDGET))
    assert boosted["num_leaves"] == int((BUDGET / 39.0 / 20_000 + 1) // 2) == 8  # 2000 rounds x 10 classes


def test_a_budget_no_forest_can_meet_is_refused_before_training():
    with pytest.raises(SizeBudgetError, match="200 trees of at least 8 leaves need about 0.12 MB"):
        effective_params("random_forest", {}, FitContext(rows=10_000, classes=2, max_onnx_bytes=50_000))


def test_the_bounded_forest_exports_within_its_estimate():
    """Real fit and export: 30k rows, 50 trees, a 0.5 MB size gate -> 0.125 MB for trees -> 32 leaves per tree."""
    from ml.export import OnnxModel, to_onnx
    from ml.train import bounded_params, build_pipeline

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=30_000), "b": rng.normal(size=30_000)})
    y = ((frame.a * frame.b > 0) ^ (rng.random(30_000) < 0.1)).astype(int).to_numpy()
    config = parse_config({"name": "bounded", "target": "y", "positive_class": 1,
                           "features": {"numeric": ["a", "b"]}, "data": {"reference": "r.csv"},
                           "model": {"estimator": "random_forest"}, "gates": {"max_size_mb": 0.5}})
    params = bounded_params(config, "random_forest", {"n_estimators": 50}, len(frame), 2)
    assert params["max_leaf_nodes"] == 32 and params["max_samples"] == MAX_TREE_ROWS
    pipeline = build_pipeline(config, "random_forest", params).fit(frame, y)
    trees = pipeline.steps[-1][1].estimators_
    assert max(t.tree_.n_leaves for t in trees) == 32
    size = OnnxModel.from_bytes(to_onnx(pipeline, config, ["0", "1"])).size_bytes
    assert size <= 0.125e6 and size > 0.5 * sum(t.tree_.node_count for t in trees) * onnx_bytes_per_node(2)

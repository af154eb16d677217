"""What decides drift by default (drift.decision: fdr): false alarms stay near drift.fdr on stable windows
however many columns there are, real shifts are found, and unusable data is never "no drift"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml.drift import detect_drift
from ml.drift.profile import ReferenceProfile
from tests.ml.drift.shifts import config, window


def wide(rows: int, seed: int, columns: int = 30, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(0, 1, (rows, columns)), columns=[f"c{i:02d}" for i in range(columns)])
    frame["c00"] += shift
    return frame


def wide_config(columns: int = 30, **drift: object):
    from ml.config import parse_config

    return parse_config({"name": "wide", "target": "y", "positive_class": 1, "data": {"reference": "r.csv"},
                         "features": {"numeric": [f"c{i:02d}" for i in range(columns)]},
                         "drift": {"drift_share": 0.01, **drift}})


def test_stable_windows_rarely_raise_an_alarm_at_the_most_sensitive_rule():
    """Small current windows against a large reference: one drifted column is enough (drift_share 0.01)."""
    from ml.data import model_frame

    cfg = wide_config()
    reference = ReferenceProfile.build(model_frame(wide(10_000, 0), cfg), cfg, "ref")
    alarms = [detect_drift(cfg, reference, wide(250, seed)).dataset_drift for seed in range(1, 41)]
    assert sum(alarms) <= 4, f"{sum(alarms)} of 40 stable windows raised an alarm"
    threshold_rule = [detect_drift(wide_config(decision="threshold"), reference, wide(250, seed)).dataset_drift
                      for seed in range(1, 11)]
    assert sum(threshold_rule) >= 5  # Evidently's effect-size rule alone alarms on most of them


@pytest.mark.parametrize("shift", ["large", "scale", "categorical", "mixed"])
def test_real_shifts_are_found(shift):
    result = detect_drift(config(), window(5000, 1), window(400, 2, shift))
    assert result.dataset_drift is not None and result.drifted_features, result.features


def test_each_column_carries_its_test_adjusted_p_value_and_effect():
    result = detect_drift(config(), window(5000, 1), window(400, 2, "large"))
    normal = result.features["normal"]
    assert normal.test == "ks" and normal.effect_method == "wasserstein" and normal.status == "drifted"
    assert normal.p_adjusted >= normal.p_value and normal.effect > 0.5
    region = result.features["region"]
    assert region.test == "chi2" and region.effect_method == "jensenshannon"
    assert result.features["rating"].test == "chi2"  # five values: tested as categories


def test_a_significant_but_tiny_shift_is_not_drift():
    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"c00": rng.normal(0, 1, 200_000)})
    current = pd.DataFrame({"c00": rng.normal(0.03, 1, 200_000)})
    column = detect_drift(wide_config(1), reference, current).features["c00"]
    assert column.p_adjusted < 1e-6 and column.effect < 0.05 and column.drifted is False
    assert "min_effect" in column.detail
    assert detect_drift(wide_config(1, min_effect=0.0), reference, current).features["c00"].drifted is True


def test_tiny_windows_and_constant_columns_are_insufficient_data():
    tiny = detect_drift(config(), window(2000, 1), window(8, 2, "large"))
    assert tiny.dataset_drift is None and tiny.drifted_share is None and tiny.evaluated == 0
    assert all(f.status == "insufficient_data" and f.drifted is None for f in tiny.features.values())
    reference, current = window(2000, 1), window(500, 2)
    reference["flag"], current["flag"] = 1.0, 1.0
    result = detect_drift(config(), reference, current)
    assert result.features["flag"].status == "insufficient_data" and result.features["flag"].detail == \
        "constant in both windows"
    assert result.evaluated == len(result.features) - 1 and result.dataset_drift is False


column_values = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.none()),
                         min_size=0, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reference=column_values, current=column_values, category=st.lists(st.sampled_from(["a", "b", None]),
                                                                         min_size=0, max_size=60))
def test_any_input_gives_a_verdict_and_unusable_data_is_never_no_drift(reference, current, category):
    from ml.config import parse_config

    cfg = parse_config({"name": "p", "target": "y", "positive_class": 1, "data": {"reference": "r.csv"},
                        "features": {"numeric": ["x"], "categorical": ["k"]}, "drift": {"min_rows": 5}})
    ref = pd.DataFrame({"x": pd.Series(reference, dtype=float),
                        "k": pd.Series((category * 2)[: len(reference)], dtype=object)})
    cur = pd.DataFrame({"x": pd.Series(current, dtype=float),
                        "k": pd.Series(category[: len(current)], dtype=object)})
    result = detect_drift(cfg, ref, cur)
    x = result.features["x"]
    usable = np.isfinite(ref["x"].to_numpy()).sum() >= 5 and np.isfinite(cur["x"].to_numpy()).sum() >= 5
    if not usable:
        assert x.status == "insufficient_data" and x.drifted is None
    else:
        assert x.status in ("drifted", "stable", "insufficient_data")
    if result.evaluated == 0:
        assert result.dataset_drift is None

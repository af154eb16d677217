"""Column profiles: exact below MAX_POINTS distinct values, within the stated bound above it, and a
reference profile survives its .npz round trip (no pickles)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ml.drift.empirical import binned_shares, ks_statistic, wasserstein
from ml.drift.profile import MAX_POINTS, ReferenceProfile, categorical_profile, numeric_profile
from tests.ml.drift.shifts import config, window

BOUND = 1 / (MAX_POINTS - 1)


def test_small_columns_are_exact_and_give_scipys_statistics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.2, 1.3, 2000)
    pa, pb = numeric_profile(a), numeric_profile(b)
    assert pa.exact and pa.n == 3000 and pa.n_unique == 3000
    assert ks_statistic(pa, pb) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-15)
    assert wasserstein(pa, pb) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)
    assert np.array_equal(np.sort(pa.values()), np.sort(a))


def test_ties_and_missing_values():
    values = np.array([1.0, 1.0, 2.0, np.nan, np.inf, 3.0, 3.0, 3.0])
    profile = numeric_profile(values)
    assert profile.n == 6 and profile.n_unique == 3 and profile.counts() == {1.0: 2, 2.0: 1, 3.0: 3}
    assert profile.cdf_at(np.array([0.5, 1.0, 2.5, 3.0])).tolist() == [0, 2 / 6, 3 / 6, 1]
    assert profile.cdf_below(np.array([1.0, 3.0])).tolist() == [0, 3 / 6]


@pytest.mark.parametrize("draw", ["normal", "zero_inflated"])
def test_large_columns_stay_within_the_stated_bound(draw):
    rng = np.random.default_rng(1)
    n = 200_000
    a = rng.normal(0, 1, n) if draw == "normal" else np.where(rng.random(n) < 0.4, 0.0, rng.exponential(1, n))
    b = a[: n // 2] + 0.05
    sketch, exact = numeric_profile(a), numeric_profile(a, max_points=n + 1)
    assert not sketch.exact and len(sketch.points) <= MAX_POINTS and exact.exact
    grid = np.linspace(a.min() - 1, a.max() + 1, 50_001)
    assert np.abs(sketch.cdf_at(grid) - exact.cdf_at(grid)).max() <= BOUND + 1 / n
    current = numeric_profile(b)
    assert abs(ks_statistic(sketch, current) - stats.ks_2samp(a, b).statistic) <= BOUND + 1 / n
    span = a.max() - a.min()
    assert abs(wasserstein(sketch, current) - stats.wasserstein_distance(a, b)) <= span * (BOUND + 1 / n)


def test_histogram_bins_are_numpys():
    rng = np.random.default_rng(2)
    a, b = rng.gamma(2, 2, 5000), rng.gamma(2.5, 2, 3000)
    ref, cur = binned_shares(numeric_profile(a), numeric_profile(b), fill_zeroes=False)
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="sturges")
    assert np.allclose(ref, np.histogram(a, edges)[0] / len(a)) and np.allclose(cur, np.histogram(b, edges)[0] / len(b))


def test_categorical_profiles_count_every_value():
    profile = categorical_profile(pd.Series(["b", "a", "b", None, "__missing__"]))
    assert profile.counts() == {"__missing__": 1, "a": 1, "b": 2} and profile.n == 4


def test_reference_profiles_round_trip_without_pickles():
    from ml.data import model_frame

    cfg = config()
    frame = model_frame(window(4000, 5), cfg)
    profile = ReferenceProfile.build(frame, cfg, sha256="ab" * 32)
    again = ReferenceProfile.from_bytes(profile.to_bytes())
    assert again.sha256 == profile.sha256 and again.rows == 4000
    for name, col in profile.columns.items():
        other = again.columns[name]
        assert (other.kind, other.n, other.n_unique, other.exact) == (col.kind, col.n, col.n_unique, col.exact)
        assert np.array_equal(other.points, col.points) and np.array_equal(other.cdf, col.cdf)
    pd.testing.assert_frame_equal(again.sample, profile.sample, check_dtype=False)

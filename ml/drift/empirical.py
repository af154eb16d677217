"""Comparisons of two column profiles that several drift statistics share: the two empirical CDFs on
their common support (KS statistic, Wasserstein distance), Evidently's binning (Jensen-Shannon, PSI),
and count tables (chi-squared, z). All vectorised with numpy; each is exact when both profiles are."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ml.drift.profile import ColumnProfile


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted distinct values of two sorted arrays (a stable sort of two sorted runs is one merge)."""
    merged = np.sort(np.concatenate([a, b]), kind="stable")
    return merged[np.concatenate([[True], merged[1:] != merged[:-1]])] if len(merged) else merged


def cdf_difference(reference: ColumnProfile, current: ColumnProfile) -> tuple[np.ndarray, np.ndarray]:
    """(grid, F_ref - F_cur) at every point either profile holds. Both CDFs are right-continuous step
    functions that only jump at those points, so the grid carries their whole difference."""
    grid = union(reference.points, current.points)
    return grid, reference.cdf_at(grid) - current.cdf_at(grid)


def ks_statistic(reference: ColumnProfile, current: ColumnProfile) -> float:
    """sup |F_ref - F_cur| (scipy.stats.ks_2samp's statistic): the difference of two right-continuous step
    functions is constant between jumps, so its largest value is at one of either window's points."""
    if not len(reference.points) or not len(current.points):
        return 0.0
    at_reference = np.abs(reference.cdf - current.cdf_at(reference.points)).max()
    at_current = np.abs(reference.cdf_at(current.points) - current.cdf).max()
    return float(max(at_reference, at_current))


def wasserstein(reference: ColumnProfile, current: ColumnProfile) -> float:
    """First Wasserstein distance: the integral of |F_ref - F_cur| (scipy.stats.wasserstein_distance)."""
    grid, diff = cdf_difference(reference, current)
    return float(np.sum(np.abs(diff[:-1]) * np.diff(grid))) if len(grid) > 1 else 0.0


def union_unique(reference: ColumnProfile, current: ColumnProfile) -> int:
    """Distinct values over both windows (exact where the profiles are; else more than any threshold)."""
    if reference.kind == "categorical":
        return len(np.union1d(reference.points, current.points))
    if reference.exact and current.exact:
        return len(union(reference.points, current.points))
    return max(reference.n_unique, current.n_unique)


def count_table(reference: ColumnProfile, current: ColumnProfile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, reference counts, current counts) over the union of values, zeros where one lacks a key."""
    ref, cur = reference.counts(), current.counts()
    keys = np.union1d(np.asarray(list(ref), dtype=reference.points.dtype),
                      np.asarray(list(cur), dtype=current.points.dtype))
    return (keys, np.array([ref.get(k, 0.0) for k in keys.tolist()]),
            np.array([cur.get(k, 0.0) for k in keys.tolist()]))


def _fill_zeroes(percents: np.ndarray) -> np.ndarray:
    positive = percents[percents != 0]
    fill = positive.min() / 10**6 if positive.min() <= 0.0001 else 0.0001
    return np.where(percents == 0, fill, percents)


def binned_shares(reference: ColumnProfile, current: ColumnProfile, n_bins: int = 30,
                  fill_zeroes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's get_binned_data: numeric columns with more than 20 distinct reference values go into
    Sturges bins over the combined range, the rest into one bucket per value; shares per window."""
    if reference.kind == "numeric" and reference.n_unique > 20:
        edges = sturges_edges(min(reference.minimum, current.minimum), max(reference.maximum, current.maximum),
                              reference.n + current.n)
        ref = _histogram(reference, edges) / reference.n
        cur = _histogram(current, edges) / current.n
    else:
        _, ref_counts, cur_counts = count_table(reference, current)
        ref, cur = ref_counts / reference.n, cur_counts / current.n
    if fill_zeroes:
        ref, cur = _fill_zeroes(ref), _fill_zeroes(cur)
    return ref, cur


def sturges_edges(first: float, last: float, n: int) -> np.ndarray:
    """np.histogram_bin_edges(x, bins="sturges") for data of size n spanning [first, last], without x."""
    width = (last - first) / (np.log2(n) + 1.0)
    if first == last:
        first, last = first - 0.5, last + 0.5
    bins = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, bins + 1, endpoint=True)


def _histogram(profile: ColumnProfile, edges: np.ndarray) -> np.ndarray:
    """np.histogram's counts from a profile: half-open bins, the last one closed."""
    below = profile.cdf_below(edges)
    below[-1] = profile.cdf_at(edges[-1:])[0]
    return np.diff(below) * profile.n

"""Column profiles: what the drift statistics need from a window, computed in one pass per column.

A numeric column is kept as its empirical CDF at a set of points: every distinct value when there are at
most `MAX_POINTS` of them (then the profile is exact: every statistic equals the one computed on the raw
values), otherwise `MAX_POINTS` order statistics evenly spaced in rank. The CDF stored at each point is
exact (the share of values <= it), and between points the profile's CDF is the step function through
them, so anywhere its error is at most the mass strictly between two neighbouring points:

    |F_profile(x) - F(x)| <= 1 / (MAX_POINTS - 1) + 1 / n        (the stated error bound)

which bounds the KS statistic's error by the same amount and the Wasserstein distance's by
(max - min) times it. A categorical column (or a numeric one with few values) keeps exact counts.

A `ReferenceProfile` holds the profiles of every model feature of a reference window, its sha256, and a
bounded random sample of its rows (for the Evidently HTML report). It is built once per reference
window and stored as one .npz file (no pickles: `np.load(allow_pickle=False)`), so every drift run
against the same reference reads only the current window.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig

#: Points kept per numeric column (exact below this many distinct values).
MAX_POINTS = 10_001
#: Rows of a window kept for the HTML report (drift.report_rows may ask for fewer).
SAMPLE_ROWS = 5_000
_FORMAT = 1


@dataclass(frozen=True)
class ColumnProfile:
    """One column of one window: `kind` numeric (points/cdf) or categorical (categories/counts)."""

    kind: str
    n: int  # non-missing, finite values
    n_unique: int
    points: np.ndarray  # numeric: sorted values; categorical: category labels (str)
    cdf: np.ndarray  # numeric: share of values <= each point; categorical: counts per category
    std: float = 0.0
    exact: bool = True

    @property
    def minimum(self) -> float:
        return float(self.points[0])

    @property
    def maximum(self) -> float:
        return float(self.points[-1])

    def cdf_at(self, x: np.ndarray) -> np.ndarray:
        """F(x) = share of values <= x (exact when the profile is exact, else within the stated bound)."""
        index = np.searchsorted(self.points, x, side="right") - 1
        return np.where(index >= 0, self.cdf[np.maximum(index, 0)], 0.0)

    def cdf_below(self, x: np.ndarray) -> np.ndarray:
        """F(x-) = share of values < x."""
        index = np.searchsorted(self.points, x, side="left") - 1
        return np.where(index >= 0, self.cdf[np.maximum(index, 0)], 0.0)

    def counts(self) -> dict[Any, float]:
        """Value -> count: the categories, or (exact numeric profiles) the distinct values."""
        if self.kind == "categorical":
            return dict(zip(self.points.tolist(), self.cdf.tolist(), strict=True))
        if not self.exact:
            raise ValueError("a sketched numeric profile keeps no exact counts")
        return dict(zip(self.points.tolist(), (np.diff(self.cdf, prepend=0.0) * self.n).round().tolist(),
                        strict=True))

    def values(self) -> np.ndarray:
        """The raw values back (exact numeric profiles only): each point repeated by its count."""
        counts = np.diff(self.cdf, prepend=0.0) * self.n
        return np.repeat(self.points, np.rint(counts).astype(np.int64))


def numeric_profile(values: np.ndarray, max_points: int = MAX_POINTS) -> ColumnProfile:
    """Profile of numeric values (NaN and infinities dropped, as Evidently drops them)."""
    finite = values[np.isfinite(values)].astype(np.float64)  # a copy, sorted in place
    finite.sort()
    n = len(finite)
    if n == 0:
        return ColumnProfile("numeric", 0, 0, finite, np.zeros(0))
    last = np.flatnonzero(np.diff(finite)) if n > 1 else np.zeros(0, dtype=np.int64)
    ends = np.append(last, n - 1)  # index of the last copy of each distinct value
    std = float(np.std(finite))
    if len(ends) <= max_points:
        return ColumnProfile("numeric", n, len(ends), finite[ends], (ends + 1) / n, std, True)
    ranks = np.unique(np.rint(np.linspace(0, n - 1, max_points)).astype(np.int64))
    # the stored CDF at a kept value counts all its copies (ties), so the step function never overshoots
    upto = np.unique(ends[np.searchsorted(ends, ranks)])
    return ColumnProfile("numeric", n, len(ends), finite[upto], (upto + 1) / n, std, False)


def categorical_profile(values: pd.Series) -> ColumnProfile:
    """Profile of categorical values (as strings; missing values are a category of model_frame's)."""
    counts = values.dropna().astype(str).value_counts(sort=False)
    labels = np.asarray(counts.index, dtype=str)
    order = np.argsort(labels, kind="stable")
    return ColumnProfile("categorical", int(counts.sum()), len(counts), labels[order],
                         counts.to_numpy(dtype=np.float64)[order])


def profile_frame(frame: pd.DataFrame, config: ModelConfig) -> dict[str, ColumnProfile]:
    """The profiles of a canonical model frame (ml.data.model_frame), by feature: numeric columns on a
    thread per CPU (numpy sorts without the GIL), categorical ones in this thread."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    numeric = list(config.features.numeric)
    with ThreadPoolExecutor(max_workers=max(1, min(len(numeric), os.cpu_count() or 1))) as pool:
        built = pool.map(lambda c: numeric_profile(frame[c].to_numpy(dtype=np.float64)), numeric)
        profiles = dict(zip(numeric, built, strict=True))
    profiles |= {c: categorical_profile(frame[c]) for c in config.features.categorical}
    return profiles


def profile_key(config: ModelConfig, sha256: str) -> str:
    """What identifies a stored profile: the window's sha256 and the features it profiles."""
    import hashlib

    features = json.dumps([config.features.numeric, config.features.categorical])
    return hashlib.sha256(f"{_FORMAT}|{sha256}|{features}".encode()).hexdigest()[:32]


PROFILES_FOLDER = "profiles"


@dataclass(frozen=True)
class ReferenceProfile:
    """Every feature's profile of one reference window, and a bounded row sample for the report."""

    sha256: str
    rows: int
    columns: dict[str, ColumnProfile]
    sample: pd.DataFrame

    @classmethod
    def build(cls, frame: pd.DataFrame, config: ModelConfig, sha256: str, seed: int = 0) -> ReferenceProfile:
        """From a canonical model frame of the reference window."""
        sample = frame.sample(n=min(len(frame), SAMPLE_ROWS), random_state=seed) if len(frame) else frame
        return cls(sha256=sha256, rows=len(frame), columns=profile_frame(frame, config),
                   sample=sample.reset_index(drop=True))

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"format": _FORMAT, "sha256": self.sha256, "rows": self.rows, "columns": {},
                                "sample_columns": list(self.sample.columns)}
        for i, (name, col) in enumerate(self.columns.items()):
            meta["columns"][name] = {"index": i, "kind": col.kind, "n": col.n, "n_unique": col.n_unique,
                                     "std": col.std, "exact": col.exact}
            arrays[f"points_{i}"], arrays[f"cdf_{i}"] = col.points, col.cdf
        for i, name in enumerate(self.sample.columns):
            values = self.sample[name]
            arrays[f"sample_{i}"] = (values.to_numpy(dtype=np.float64) if values.dtype.kind == "f"
                                     else values.astype(str).to_numpy(dtype=str))
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceProfile:
        import pandas as pd

        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes())
            if meta.get("format") != _FORMAT:
                raise ValueError(f"reference profile format {meta.get('format')} (expected {_FORMAT})")
            columns = {name: ColumnProfile(m["kind"], m["n"], m["n_unique"], stored[f"points_{m['index']}"],
                                           stored[f"cdf_{m['index']}"], m["std"], m["exact"])
                       for name, m in meta["columns"].items()}
            sample = pd.DataFrame({name: stored[f"sample_{i}"] for i, name in enumerate(meta["sample_columns"])})
        for name, col in columns.items():
            if col.kind == "categorical" and name in sample:
                sample[name] = sample[name].astype(object)
        return cls(sha256=meta["sha256"], rows=meta["rows"], columns=columns, sample=sample)

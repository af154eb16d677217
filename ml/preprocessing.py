"""The numeric preprocessing of the training pipeline: scikit-learn's own, fitted with memory bounded by a column
or a chunk of rows instead of copies of the whole matrix.

`MedianImputer`. `SimpleImputer(strategy="median")` takes its medians with `np.ma.median` over the whole matrix,
which sorts a copy of it, its argsort and a gathered copy: three more copies of the numeric training columns while
it fits (330 MB at 1.7M rows x 8 columns, once the peak of the whole run at a million rows per window).
`MedianImputer` computes the same medians (the median of each column's non-missing values; NaN, or 0 with
`keep_empty_features`, for a column with none) from one column at a time, so its fit needs a column's worth of
memory beyond the input. Everything else, `transform` included, is SimpleImputer's own.

`ChunkedScaler`. `StandardScaler.fit` computes the variance from `X - mean` in float64: a float64 copy of the
whole matrix (104 MB at 1.7M x 8, twice the float32 input). `ChunkedScaler` fits with StandardScaler's own
`partial_fit` over chunks of `CHUNK_ROWS` rows (its incremental mean and variance, Chan et al.), so its fit needs
a chunk's worth; the statistics equal a one-shot fit's to float64 rounding (relative 1e-12). It transforms in
place (`copy=False`): in the pipeline its input is the imputer's output, a fresh array already.

Both convert to ONNX with skl2onnx's converters of the classes they extend (ml.export registers them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import StandardScaler
from sklearn.utils._mask import _get_mask

#: rows per partial_fit of ChunkedScaler: 65,536 x 8 float64 columns is 4 MB of temporary memory
CHUNK_ROWS = 65_536


class MedianImputer(SimpleImputer):
    """SimpleImputer whose median strategy is fitted column by column (same statistics_); the other
    strategies are SimpleImputer's own."""

    def _dense_fit(self, X: np.ndarray, strategy: Any, missing_values: Any, fill_value: Any) -> np.ndarray:
        if strategy != "median":
            return super()._dense_fit(X, strategy, missing_values, fill_value)
        missing = _get_mask(X, missing_values)
        self._fit_indicator(missing)
        medians = np.empty(X.shape[1], dtype=np.float64)
        for j in range(X.shape[1]):
            present = X[~missing[:, j], j]
            medians[j] = np.median(present) if present.size else (0 if self.keep_empty_features else np.nan)
        return medians


class ChunkedScaler(StandardScaler):
    """StandardScaler fitted over chunks of rows with its own partial_fit (same statistics to float64 rounding);
    transforms in place by default (its input in the pipeline is the imputer's fresh output)."""

    def __init__(self, *, copy: bool = False, with_mean: bool = True, with_std: bool = True) -> None:
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> ChunkedScaler:
        if sample_weight is not None or not isinstance(X, np.ndarray) or X.ndim != 2 or len(X) <= CHUNK_ROWS:
            return super().fit(X, y, sample_weight)
        self._reset()
        for start in range(0, len(X), CHUNK_ROWS):
            self.partial_fit(X[start:start + CHUNK_ROWS])
        return self

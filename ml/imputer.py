"""The numeric imputer of the training pipeline: scikit-learn's median SimpleImputer, fitted one column at a time.

`SimpleImputer(strategy="median")` takes its medians with `np.ma.median` over the whole matrix, which
sorts a copy of it, its argsort and a gathered copy: three more copies of the numeric training columns
while it fits (330 MB at 1.7M rows x 8 columns, the peak of the whole run at a million rows per window).
`MedianImputer` computes the same medians (the median of each column's non-missing values; NaN, or 0 with
`keep_empty_features`, for a column with none) from one column at a time, so its fit needs a column's
worth of memory beyond the input. Everything else, `transform` included, is SimpleImputer's own; the
ONNX export converts it with skl2onnx's SimpleImputer converter (ml.export registers it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.utils._mask import _get_mask


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

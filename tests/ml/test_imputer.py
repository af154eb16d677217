"""ml.imputer.MedianImputer: scikit-learn's median SimpleImputer, fitted one column at a time."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.impute import SimpleImputer

from ml.imputer import MedianImputer

pytestmark = pytest.mark.filterwarnings("ignore:Skipping features without any observed values")


def _matrix(rows: int, dtype: type) -> np.ndarray:
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 5)).astype(dtype)
    x[rng.random((rows, 5)) < 0.3] = np.nan
    x[:, 3] = np.round(x[:, 3])  # ties: the two middle values of an even count are equal or not
    x[:, 4] = np.nan  # a column with no value at all
    return x


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 1001])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("keep_empty", [False, True])
def test_the_medians_and_the_imputed_matrix_are_simple_imputers(rows, dtype, keep_empty):
    x = _matrix(rows, dtype)
    ours = MedianImputer(strategy="median", keep_empty_features=keep_empty).fit(x)
    theirs = SimpleImputer(strategy="median", keep_empty_features=keep_empty).fit(x)
    np.testing.assert_array_equal(ours.statistics_, theirs.statistics_)
    np.testing.assert_array_equal(ours.transform(x), theirs.transform(x))
    assert ours.transform(x).dtype == theirs.transform(x).dtype


def test_other_strategies_are_simple_imputers_own():
    x = _matrix(50, np.float64)
    ours = MedianImputer(strategy="mean").fit(x)
    np.testing.assert_array_equal(ours.statistics_, SimpleImputer(strategy="mean").fit(x).statistics_)


def test_it_converts_to_onnx_as_the_simple_imputer_it_is():
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from ml.export import _register_imputer_converter

    _register_imputer_converter()
    x = _matrix(200, np.float32)[:, :4]
    fitted = MedianImputer(strategy="median").fit(x)
    model = convert_sklearn(fitted, initial_types=[("x", FloatTensorType([None, 4]))])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (imputed,) = session.run(None, {"x": x})
    np.testing.assert_allclose(imputed, fitted.transform(x), rtol=0, atol=0)


def test_the_median_fit_does_not_sort_the_whole_matrix(monkeypatch):
    """The point of the class: np.ma.median (three copies of the matrix) is not what fits it, so a scikit-learn
    release that stopped calling the overridden fit would fail here instead of quietly costing the memory."""
    def whole_matrix_median(*args, **kwargs):
        raise AssertionError("np.ma.median called")

    monkeypatch.setattr(np.ma, "median", whole_matrix_median)
    x = _matrix(100, np.float32)
    with pytest.raises(AssertionError, match="np.ma.median"):
        SimpleImputer(strategy="median").fit(x)
    assert MedianImputer(strategy="median").fit(x).statistics_.shape == (5,)

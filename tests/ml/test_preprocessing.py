"""ml.preprocessing: scikit-learn's median SimpleImputer fitted one column at a time, its StandardScaler fitted
over chunks of rows; the same statistics, the same ONNX conversion."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import StandardScaler

from ml.preprocessing import CHUNK_ROWS, ChunkedScaler, MedianImputer

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

    from ml.export import _register_preprocessing_converters

    _register_preprocessing_converters()
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


def _wide(rows: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.normal(size=(rows, 3)) * [1.0, 1000.0, 1e-3] + [0.0, 5e4, 3.0]).astype(np.float32)


@pytest.mark.parametrize("rows", [10, CHUNK_ROWS, 3 * CHUNK_ROWS + 17])
def test_the_chunked_scaler_fits_standard_scalers_statistics(rows):
    x = _wide(rows)
    ours, theirs = ChunkedScaler().fit(x), StandardScaler().fit(x)
    assert ours.n_samples_seen_ == theirs.n_samples_seen_ == rows
    for name in ("mean_", "var_", "scale_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-12, atol=0)
    expected = theirs.transform(x)
    scaled = ours.transform(x.copy())
    np.testing.assert_allclose(scaled, expected, rtol=1e-6, atol=1e-6)
    assert scaled.dtype == expected.dtype == np.float32


def test_the_chunked_fit_never_takes_the_mean_and_variance_of_the_whole_matrix(monkeypatch):
    """The point of the class: sklearn's float64 `X - mean` of the whole matrix is not what fits it, so a
    scikit-learn release whose partial_fit stopped working on the chunks fails here instead of costing memory."""
    import sklearn.preprocessing._data as data

    seen: list[int] = []
    original = data._incremental_mean_and_var

    def counting(X, *args, **kwargs):
        seen.append(X.shape[0])
        return original(X, *args, **kwargs)

    monkeypatch.setattr(data, "_incremental_mean_and_var", counting)
    ChunkedScaler().fit(_wide(3 * CHUNK_ROWS + 17))
    assert seen and max(seen) <= CHUNK_ROWS and sum(seen) == 3 * CHUNK_ROWS + 17


def test_the_training_pipeline_leaves_its_input_alone_and_converts_to_onnx():
    """The scaler scales in place, the imputer's fresh output: the caller's frame is untouched, and the ONNX
    model (skl2onnx's StandardScaler converter) gives the pipeline's numbers."""
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.pipeline import Pipeline

    from ml.export import _register_preprocessing_converters

    _register_preprocessing_converters()
    x = _wide(3 * CHUNK_ROWS)
    x[::7, 1] = np.nan
    before = x.copy()
    pipeline = Pipeline([("impute", MedianImputer(strategy="median")), ("scale", ChunkedScaler())]).fit(x)
    scaled = pipeline.transform(x)
    np.testing.assert_array_equal(x, before)
    model = convert_sklearn(pipeline, initial_types=[("x", FloatTensorType([None, 3]))])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_scaled,) = session.run(None, {"x": x})
    np.testing.assert_allclose(onnx_scaled, scaled, rtol=1e-5, atol=1e-5)

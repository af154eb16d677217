import numpy as np
import onnx
import pytest

from ml.challenger import fit_challenger
from ml.config import load_config
from ml.data import model_frame, read_window
from ml.errors import ConfigError
from ml.estimators import available_estimators, build_estimator
from ml.export import ModelIntegrityError, OnnxModel, to_onnx
from ml.train import split_training_data
from tests.conftest import DATA, DEMO_CONFIG


@pytest.fixture(scope="module")
def windows():
    return read_window(str(DATA / "reference.csv")).frame, read_window(str(DATA / "current_no_drift.csv")).frame


@pytest.mark.parametrize("estimator", ["logistic_regression", "random_forest"])
def test_trained_pipeline_exports_to_onnx_with_parity(windows, estimator):
    base = load_config(DEMO_CONFIG)
    params = {"n_estimators": 30} if estimator == "random_forest" else {}
    config = base.model_copy(update={"model": base.model.model_copy(update={"estimator": estimator,
                                                                            "params": params})})
    challenger = fit_challenger(config, *windows)
    assert challenger.metrics["roc_auc"] > 0.75
    model = OnnxModel.from_bytes(to_onnx(challenger.pipeline, config, challenger.data.classes))
    assert model.classes == ["0", "1"] and model.categorical == ["department"] and len(model.numeric) == 8
    proba = model.predict_proba(model_frame(challenger.data.eval_frame, config))
    assert np.abs(proba - challenger.eval_proba).max() < 1e-5
    # an unseen category and a missing numeric reach the model exactly as in training
    frame = model_frame(challenger.data.eval_frame.head(3).assign(department="Legal", salary=np.nan), config)
    assert np.abs(model.predict_proba(frame) - challenger.pipeline.predict_proba(frame)).max() < 1e-5


def test_holdout_comes_from_the_labelled_current_window(windows):
    config = load_config(DEMO_CONFIG)
    data = split_training_data(config, *windows)
    assert data.eval_source == "current" and len(data.eval_frame) == 600
    assert len(data.x_train) == 5000 + 1400
    assert split_training_data(config, windows[0], windows[1].drop(columns="attrition")).eval_source == "reference"


def test_onnx_integrity_checks(windows):
    config = load_config(DEMO_CONFIG)
    challenger = fit_challenger(config, *windows)
    data = to_onnx(challenger.pipeline, config, challenger.data.classes)
    good = OnnxModel.from_bytes(data)
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        OnnxModel.from_bytes(bytes(tampered), expected_sha256=good.sha256)
    proto = onnx.load_model_from_string(data)
    tensor = proto.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    with pytest.raises(ModelIntegrityError, match="external data"):
        OnnxModel.from_bytes(proto.SerializeToString())


def test_estimator_registry_errors():
    assert {"logistic_regression", "random_forest"} <= set(available_estimators())
    with pytest.raises(ConfigError, match="unknown estimator 'xgb'; available"):
        build_estimator("xgb", {}, 0)
    with pytest.raises(ConfigError, match="model.params: invalid parameters for 'random_forest'"):
        build_estimator("random_forest", {"trees": 5}, 0)


@pytest.mark.parametrize(("current", "expected"), [("current_covariate_drift.csv", "all"),
                                                  ("current_concept_drift.csv", "current")])
def test_best_window_follows_the_holdout(current, expected):
    from ml.challenger import fit_best_challenger

    config = load_config(DEMO_CONFIG)
    reference = read_window(str(DATA / "reference.csv")).frame
    best = fit_best_challenger(config, reference, read_window(str(DATA / current)).frame, ["all", "current"])
    assert best.window == expected
    assert best.candidates[expected] == max(best.candidates.values())
    assert best.metrics["roc_auc"] == best.candidates[expected]


def small_config(**training):
    config = load_config(DEMO_CONFIG)
    return config.model_copy(update={"training": config.training.model_copy(update=training)})


def test_a_holdout_below_the_minimum_is_cross_fitted_on_every_row(windows, tmp_path):
    from ml.train import Holdout

    config = small_config()  # 300 labelled current rows: a 30% holdout would be 90 < 200 rows
    reference, current = windows[0], windows[1].head(300)
    data = split_training_data(config, reference, current)
    assert data.folds == 5 and data.eval_source == "current" and len(data.eval_frame) == 300
    assert len(data.x_train) == 5000 + 300 and (data.train_folds[:5000] == -1).all()
    assert sorted(np.bincount(data.eval_folds)) == [60] * 5
    challenger = fit_challenger(config, reference, current)
    # each row is scored by the fit that left its fold out: refit fold 0 by hand and compare
    from ml.train import fit_pipeline

    keep = data.train_folds != 0
    pipeline, _ = fit_pipeline(config, challenger.estimator, challenger.params, data.x_train[keep],
                               data.y_train[keep], data.weights[keep], 2)
    rows = data.eval_folds == 0
    expected = pipeline.predict_proba(model_frame(data.eval_frame[rows], config))
    assert np.abs(challenger.cross_fitted_proba[rows] - expected).max() < 1e-9
    assert np.abs(challenger.cross_fitted_proba - challenger.eval_proba).max() > 1e-3  # not the in-sample fit
    path = tmp_path / "holdout.parquet"
    challenger.holdout.write(path)
    back = Holdout.read(path)
    assert np.array_equal(back.cross_fitted_proba, challenger.cross_fitted_proba)
    assert np.array_equal(back.sklearn_proba, challenger.eval_proba)
    assert list(back.frame.columns) == list(current.columns)
    assert back.judged(back.sklearn_proba) is back.cross_fitted_proba


def test_a_large_enough_holdout_is_held_out_as_before(windows):
    data = split_training_data(small_config(min_holdout_rows=0), windows[0], windows[1].head(300))
    assert data.folds == 0 and len(data.eval_frame) == 90 and data.train_folds is None
    assert split_training_data(small_config(), *windows).folds == 0  # 600 rows >= 200


def test_cross_fitted_metrics_do_not_flatter_a_model_that_memorised_noise():
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(400, 8)), columns=[f"f{i}" for i in range(8)])
    frame["attrition"] = rng.integers(0, 2, 400)  # labels unrelated to the features
    config = load_config(DEMO_CONFIG).model_copy(deep=True)
    config = config.model_copy(update={
        "features": config.features.model_copy(update={"numeric": [f"f{i}" for i in range(8)], "categorical": []}),
        "model": config.model.model_copy(update={"estimator": "random_forest", "params": {"n_estimators": 50}}),
        "sensitive_feature": None})
    challenger = fit_challenger(config, frame.head(100), frame.tail(300))
    from ml.metrics import score

    in_sample = score("roc_auc", challenger.data.y_eval, challenger.eval_proba, 0.5)
    assert in_sample > 0.9  # the fitted forest has seen every holdout row
    assert abs(challenger.metrics["roc_auc"] - 0.5) < 0.1  # what the gates are shown instead


def test_a_frame_is_scored_in_chunks_with_the_same_probabilities(tmp_path, monkeypatch):
    """OnnxModel.predict_proba bounds onnxruntime's memory by scoring chunks: the rows' probabilities are the
    ones one call gives."""
    import numpy as np
    import pandas as pd

    from ml.challenger import fit_challenger
    from ml.config import load_config
    from ml.data import model_frame
    from ml.export import OnnxModel, to_onnx
    from tests.conftest import DATA, DEMO_CONFIG

    config = load_config(DEMO_CONFIG)
    reference = pd.read_csv(DATA / "reference.csv")
    challenger = fit_challenger(config, reference, None)
    model = OnnxModel.from_bytes(to_onnx(challenger.pipeline, config, challenger.data.classes))
    frame = model_frame(reference, config)
    whole = model.predict_proba(frame, chunk_rows=len(frame))
    calls = []
    one_call = OnnxModel.predict_proba_feed
    monkeypatch.setattr(OnnxModel, "predict_proba_feed",
                        lambda self, feed: calls.append(len(next(iter(feed.values())))) or one_call(self, feed))
    chunked = model.predict_proba(frame, chunk_rows=777)  # 5,000 rows: 6 full chunks and a short one
    assert calls == [777] * 6 + [5000 - 6 * 777]
    assert chunked.shape == whole.shape == (len(frame), 2)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)

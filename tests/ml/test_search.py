"""model.estimator auto: on a concept a linear model cannot learn (a band of ages, a threshold interaction),
the default config registers and serves a model; every candidate is recorded; a candidate that cannot be
served is never chosen; named estimators train exactly as before."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.tree import DecisionTreeClassifier

from ml import estimators
from ml.challenger import fit_best_challenger, fit_challenger
from ml.config import load_config, parse_config
from ml.errors import TrainingError
from tests.conftest import free_port

NUMERIC = ["age", "tenure", "hours", "noise"]


def nonlinear_frame(n: int, seed: int) -> pd.DataFrame:
    """label = (age in [30, 45]) XOR (tenure > 10 and hours > 45), 5% of labels flipped: no linear signal."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.integers(18, 70, n).astype(float), "tenure": rng.uniform(0, 25, n),
                          "hours": rng.normal(42, 6, n), "noise": rng.normal(size=n),
                          "team": rng.choice(["a", "b", "c"], n)})
    band = frame.age.between(30, 45)
    interaction = (frame.tenure > 10) & (frame.hours > 45)
    frame["left"] = ((band ^ interaction) ^ (rng.random(n) < 0.05)).astype(int)
    return frame


def config_dict(**extra: object) -> dict:
    return {"name": "nonlinear", "target": "left", "positive_class": 1,
            "features": {"numeric": NUMERIC, "categorical": ["team"]}, "data": {"reference": "ref.csv"}, **extra}


@pytest.fixture(scope="module")
def windows() -> tuple[pd.DataFrame, pd.DataFrame]:
    return nonlinear_frame(1500, 1), nonlinear_frame(700, 2)


def test_the_default_config_serves_a_model_on_a_nonlinear_concept(ct_home, tmp_path):
    """Bootstrap with no model section at all: auto finds a model that passes min_roc_auc and the no-skill gate."""
    from mlflow import MlflowClient

    from ml.estimators import search_space
    from ml.pipeline import run_pipeline

    nonlinear_frame(2000, 1).to_csv(tmp_path / "ref.csv", index=False)
    nonlinear_frame(1000, 2).to_csv(tmp_path / "cur.csv", index=False)
    raw = config_dict(data={"reference": "ref.csv", "current": "cur.csv"}, deploy={"port": free_port()})
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "model.yaml")
    assert config.model.estimator == "auto"
    record = run_pipeline(config, "r1").to_dict()
    assert record["status"] == "promoted", (record["errors"], record["failed_gates"])
    assert record["gates"]["min_roc_auc"]["value"] > 0.85 and record["gates"]["challenger_vs_champion"]["passed"]
    search = record["training"]["search"]
    assert [c["name"] for c in search["candidates"]] == [f"{n}_{i}" for n, i, _ in search_space()]
    by_name = {c["name"]: c for c in search["candidates"]}
    chosen = by_name[search["chosen"]]
    assert chosen["status"] == "chosen" and chosen["estimator"] in ("random_forest", "lightgbm")
    assert record["training"]["estimator"] == chosen["estimator"] and record["training"]["params"] == chosen["params"]
    assert chosen["onnx_mb"] > 0 and chosen["parity"] <= 1e-4 and chosen["latency_p99_ms"] > 0
    assert by_name["logistic_regression_1"]["cv_score"] < 0.65 < chosen["cv_score"]  # the linear model cannot
    assert all(c["cv_seconds"] > 0 and c["params"] for c in search["candidates"])
    best = max(c["cv_score"] for c in search["candidates"])
    assert chosen["cv_score"] == best  # nothing better was excluded here
    # the served model answers, and it learned the band of ages
    for age, label in ((37, "1"), (60, "0"), (22, "0")):
        row = {"age": age, "tenure": 3.0, "hours": 40.0, "noise": 0.0, "team": "a"}
        response = httpx.post(f"{record['deployment']['url']}/predict", json=row, timeout=10)
        assert response.status_code == 200 and response.json()["label"] == label, (age, response.text)
    # and the MLflow run has the search: a param per candidate, its CV score, the chosen one
    run = MlflowClient().get_run(record["run_id"]).data
    assert run.params["search.lightgbm_2"] == '{"learning_rate": 0.05, "n_estimators": 200, "num_leaves": 31}'
    assert run.metrics[f"search.{search['chosen']}.cv_roc_auc"] == pytest.approx(chosen["cv_score"])
    assert run.tags["ct.search.chosen"] == search["chosen"] and run.params["estimator"] == chosen["estimator"]


def test_the_linear_default_of_before_fails_there(windows):
    """Why auto is the default: the named logistic regression is near no-skill on the same concept."""
    config = parse_config(config_dict(model={"estimator": "logistic_regression"}))
    assert fit_challenger(config, *windows).metrics["roc_auc"] < 0.65


class _OpaqueTree(DecisionTreeClassifier):
    """A decision tree no ONNX converter knows (skl2onnx looks converters up by exact type); it scores well here."""


@pytest.fixture
def registered(monkeypatch):
    """Register test estimators for one test only; `built` records every n_estimators a forest was built with."""
    built: list[int] = []

    def register(name: str, factory, **options) -> None:
        monkeypatch.setitem(estimators._REGISTRY, name, None)  # restored (removed) after the test
        estimators.register_estimator(name, **options)(factory)

    def counting_forest(params: dict, seed: int):
        from sklearn.ensemble import RandomForestClassifier

        built.append(params["n_estimators"])
        return RandomForestClassifier(random_state=seed, **params)

    register("opaque_tree", lambda params, seed: _OpaqueTree(random_state=seed, **params), scale=False,
             grid=[{"max_depth": 6}])
    # max_leaf_nodes given (None): the size bound of ml.estimators does not apply, only the early estimate
    register("counting_forest", counting_forest, scale=False,
             grid=[{"n_estimators": 100, "min_samples_leaf": 1, "max_leaf_nodes": None}])
    return built


def search_config(names: list[str], **extra: object):
    return parse_config(config_dict(model={"search": {"estimators": names}}, **extra))


def test_a_candidate_that_cannot_convert_is_never_chosen(windows, registered):
    best = fit_best_challenger(search_config(["opaque_tree", "logistic_regression"]), *windows, ["all"])
    by_name = {c.name: c for c in best.search.candidates}
    opaque, linear = by_name["opaque_tree_1"], by_name["logistic_regression_1"]
    assert opaque.cv_score > linear.cv_score + 0.2  # it ranked first ...
    assert opaque.status == "excluded" and "ONNX export of opaque_tree failed" in opaque.reason  # ... and was refused
    assert best.search.chosen.startswith("logistic_regression_") and best.estimator == "logistic_regression"
    assert best.onnx is not None


def test_a_candidate_projected_over_the_size_gate_is_not_trained_to_the_end(windows, registered):
    """An unbounded forest (max_leaf_nodes: None given) against a 0.2 MB size gate: only the 10-tree estimate
    is ever fitted, never its 100 trees; the small linear model is chosen."""
    config = search_config(["counting_forest", "logistic_regression"], gates={"max_size_mb": 0.2})
    best = fit_best_challenger(config, *windows, ["all"])
    forest = next(c for c in best.search.candidates if c.estimator == "counting_forest")
    assert forest.status == "excluded" and forest.reason.startswith("from 10 of 100 trees: size projected")
    assert registered == [10] and best.estimator == "logistic_regression"
    assert forest.cv_score is None  # not even cross-validated


def test_a_named_forest_projected_over_the_size_gate_fails_before_training_to_the_end(windows, registered):
    config = parse_config(config_dict(model={"estimator": "counting_forest",
                                             "params": {"n_estimators": 100, "max_leaf_nodes": None,
                                                        "min_samples_leaf": 1}},
                                      gates={"max_size_mb": 0.2}))
    with pytest.raises(TrainingError, match="counting_forest would fail the serving gates \\(from 10 of 100 trees: "
                                            "size projected .* > 0.2"):
        fit_challenger(config, *windows)
    assert registered == [10]


def test_no_servable_candidate_is_a_clear_error(windows):
    config = search_config(["logistic_regression"], gates={"max_latency_ms": 1e-6})
    with pytest.raises(TrainingError, match="auto: no candidate can be served \\(logistic_regression_1 excluded: "
                                            "latency .* > 1e-06.*logistic_regression_2 excluded: latency"):
        fit_challenger(config, *windows)


def test_the_budget_stops_starting_candidates_but_the_first_always_runs(windows):
    config = parse_config(config_dict(model={"search": {"budget_s": 0.001}}))
    best = fit_challenger(config, *windows)
    statuses = [(c.name, c.status) for c in best.search.candidates]
    assert statuses[0] == ("logistic_regression_1", "chosen")
    assert {s for _, s in statuses[1:]} == {"skipped"}
    assert all(c.reason == "search budget of 0.001 s spent" and c.cv_score is None for c in best.search.candidates[1:])


def test_the_search_is_deterministic(windows):
    config = search_config(["random_forest", "lightgbm"])
    runs = [fit_challenger(config, *windows) for _ in range(2)]
    first, second = (r.search.candidates for r in runs)
    assert [(c.name, c.status, c.params) for c in first] == [(c.name, c.status, c.params) for c in second]
    # a forest sums its trees in thread order: scores agree to float rounding
    assert [c.cv_score for c in first] == pytest.approx([c.cv_score for c in second], rel=0, abs=1e-12)
    assert runs[0].search.chosen == runs[1].search.chosen
    np.testing.assert_allclose(runs[0].eval_proba, runs[1].eval_proba, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["logistic_regression", "random_forest"])
def test_named_estimators_train_exactly_as_before(windows, name):
    """The pipeline a named estimator fits is the one this project always built (same defaults, no bounds on
    small data): the same probabilities."""
    from sklearn.base import clone
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from ml.data import model_frame

    params = {"n_estimators": 30} if name == "random_forest" else {"C": 0.5}
    config = parse_config(config_dict(model={"estimator": name, "params": params}))
    challenger = fit_challenger(config, *windows)
    numeric = [("impute", SimpleImputer(strategy="median"))]
    if name == "random_forest":
        classifier = RandomForestClassifier(n_estimators=30, min_samples_leaf=5, class_weight="balanced_subsample",
                                            n_jobs=-1, random_state=42)
    else:
        numeric.append(("scale", StandardScaler()))
        classifier = LogisticRegression(C=0.5, max_iter=2000, class_weight="balanced", random_state=42)
    data = challenger.data
    features = model_frame(data.eval_frame, config)

    def fitted(dtype: type) -> np.ndarray:
        encoder = OneHotEncoder(handle_unknown="ignore", dtype=dtype)
        before = Pipeline([("features", ColumnTransformer([("numeric", Pipeline(numeric), NUMERIC),
                                                           ("categorical", encoder, ["team"])])),
                           ("classifier", clone(classifier))])
        x = data.x_train.astype({c: dtype for c in NUMERIC})
        before.fit(x, data.y_train, classifier__sample_weight=data.weights)
        return before.predict_proba(features)

    # training is float32 (the training frame and the one-hot columns, as ONNX reads them); a forest sums its
    # trees' votes in thread order: equal up to float rounding, not bit for bit
    np.testing.assert_allclose(fitted(np.float32), challenger.eval_proba, rtol=0, atol=1e-12)
    # and what float32 changes against the same pipeline in float64 is below any gate's tolerance
    np.testing.assert_allclose(fitted(np.float64), challenger.eval_proba, rtol=0, atol=1e-6)
    assert challenger.search is None and challenger.onnx is None
    assert challenger.params == ({"n_estimators": 30, "min_samples_leaf": 5, "class_weight": "balanced_subsample",
                                  "n_jobs": -1} if name == "random_forest" else
                                 {"C": 0.5, "max_iter": 2000, "class_weight": "balanced"})


def test_window_auto_searches_once_then_compares_windows_with_the_choice():
    """Concept drift on the demo data: the search runs on reference + current; the current-only window is
    fitted with the chosen estimator, checked for export, and wins on the holdout."""
    from ml.data import read_window
    from tests.conftest import DATA

    config = parse_config({**yaml.safe_load((DATA.parents[1] / "configs" / "employee-attrition.yaml").read_text()),
                           "model": {"search": {"estimators": ["logistic_regression", "lightgbm"]}}})
    reference = read_window(str(DATA / "reference.csv")).frame
    current = read_window(str(DATA / "current_concept_drift.csv")).frame
    best = fit_best_challenger(config, reference, current, ["all", "current"])
    assert best.window == "current" and best.candidates["current"] == max(best.candidates.values())
    chosen = next(c for c in best.search.candidates if c.name == best.search.chosen)
    assert best.estimator == chosen.estimator and best.onnx is not None
    assert {k: best.params[k] for k in chosen.setting} == chosen.setting


def test_the_search_report_round_trips_through_the_train_result(windows):
    """The train step's result crosses processes as JSON (ml.result): the search comes back typed."""
    import json

    from ml.train import CandidateResult, SearchReport, TrainResult

    best = fit_challenger(search_config(["logistic_regression"]), *windows)
    result = TrainResult(model_id="m", model_uri="models:/m", onnx_sha256="0" * 64, onnx_size_bytes=1,
                         estimator=best.estimator, train_rows=1, eval_rows=1, eval_source="current",
                         metrics=best.metrics, classes=best.data.classes, params=best.params, search=best.search)
    back = TrainResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back == result and isinstance(back.search, SearchReport)
    assert all(isinstance(c, CandidateResult) for c in back.search.candidates)
    assert back.search.chosen_setting in ({"C": 1.0}, {"C": 0.1})


@pytest.mark.parametrize(("model", "message"), [
    ({"params": {"C": 1.0}}, "model: params are only for a named estimator \\(auto tries its own settings\\)"),
    ({"estimator": "random_forest", "search": {"budget_s": 5}}, "model: search applies only to estimator auto"),
    ({"search": {"budget_s": 0}}, "model.search.budget_s: Input should be greater than 0"),
    ({"search": {"cv_folds": 1}}, "model.search.cv_folds: Input should be greater than or equal to 2"),
    ({"search": {"estimators": []}}, "model.search.estimators: List should have at least 1 item"),
    ({"search": {"budget": 5}}, "model.search.budget: unknown key"),
])
def test_search_config_is_validated(model, message):
    from ml.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config(config_dict(model=model))


def test_search_defaults_and_unknown_estimators():
    from ml.errors import ConfigError

    spec = parse_config(config_dict()).model
    assert (spec.estimator, spec.search.budget_s, spec.search.cv_folds, spec.search.max_rows,
            spec.search.estimators) == ("auto", 120.0, 3, 10_000, None)
    with pytest.raises(ConfigError, match="model.search.estimators: 'xgboost' is not a registered estimator"):
        fit_challenger(search_config(["xgboost"]), nonlinear_frame(200, 1), None)

"""Properties of the synthetic employee-attrition generator and of the shipped demo files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.datasets import attrition
from ml.datasets.attrition import COLUMNS, FEATURES, LABEL, NUMERIC_FEATURES, generate, write_demo_data

SHIPPED = Path(__file__).resolve().parents[3] / "data" / "attrition"
SEED = 42
REGENERATE = "python -m ml.datasets.attrition --out data/attrition"

INT_COLUMNS = ["age", "performance_rating", "projects_count", "promotion_flag", LABEL]
FLOAT_COLUMNS = ["tenure", "satisfaction_score", "work_hours", "salary"]


@pytest.fixture(scope="module")
def windows() -> dict[str, pd.DataFrame]:
    return {
        "reference": generate("reference", 5000, SEED),
        "no_drift": generate("no_drift", 2000, SEED),
        "covariate_drift": generate("covariate_drift", 2000, SEED),
        "concept_drift": generate("concept_drift", 2000, SEED),
    }


@pytest.fixture(scope="module")
def model(windows: dict[str, pd.DataFrame]) -> Pipeline:
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), list(NUMERIC_FEATURES)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["department"]),
        ]
    )
    pipe = Pipeline([("pre", pre), ("clf", LogisticRegression(class_weight="balanced", max_iter=1000))])
    ref = windows["reference"]
    return pipe.fit(ref[list(FEATURES)], ref[LABEL])


def _auc(model: Pipeline, frame: pd.DataFrame) -> float:
    return float(roc_auc_score(frame[LABEL], model.predict_proba(frame[list(FEATURES)])[:, 1]))


def _normalised_wasserstein(ref: pd.Series, cur: pd.Series) -> float:
    return float(wasserstein_distance(ref, cur) / ref.std())


# 1. determinism, schema, ranges, label rate -------------------------------------------------------


def test_generate_is_deterministic_per_seed_and_differs_across_seeds():
    for scenario in ("reference", "covariate_drift", "concept_drift", "bad_wrong_type"):
        pd.testing.assert_frame_equal(generate(scenario, 300, 7), generate(scenario, 300, 7))
        assert not generate(scenario, 300, 7).equals(generate(scenario, 300, 8))
    # scenarios use independent streams: same seed, different scenario -> different rows
    features = list(FEATURES)
    assert not generate("reference", 300, 7)[features].equals(generate("no_drift", 300, 7)[features])


def test_columns_dtypes_and_ranges(windows):
    for name, frame in windows.items():
        assert list(frame.columns) == list(COLUMNS), name
        for col in INT_COLUMNS:
            assert pd.api.types.is_integer_dtype(frame[col]), (name, col)
        for col in FLOAT_COLUMNS:
            assert pd.api.types.is_float_dtype(frame[col]), (name, col)
        assert frame["department"].dtype == object
        assert not frame.isna().any().any(), name
        assert frame["age"].between(18, 65).all()
        assert frame["tenure"].between(0, 40).all()
        assert (frame["tenure"] <= frame["age"] - 18).all()
        assert frame["satisfaction_score"].between(1.0, 5.0).all()
        assert frame["performance_rating"].between(1, 5).all()
        assert frame["work_hours"].between(30, 80).all()
        assert frame["projects_count"].between(1, 12).all()
        assert set(frame["promotion_flag"].unique()) <= {0, 1}
        assert frame["salary"].between(30_000, 200_000).all()
        assert (frame["salary"] == frame["salary"].round()).all()
        assert set(frame[LABEL].unique()) == {0, 1}
        assert set(frame["department"].unique()) == set(attrition.DEPARTMENTS)
    ref = windows["reference"]
    assert 0.10 <= ref[LABEL].mean() <= 0.30
    # salary depends on department: Engineering pays more than HR on average
    by_dept = ref.groupby("department")["salary"].mean()
    assert by_dept["Engineering"] > by_dept["HR"] + 20_000


def test_unknown_scenario_lists_valid_ones():
    with pytest.raises(ValueError, match="reference.*no_drift.*covariate_drift.*concept_drift"):
        generate("sideways_drift", 10, SEED)


# 2. model quality: realistic on no drift, clearly worse under concept drift ---------------------


def test_auc_no_drift_realistic_and_concept_drift_drops(windows, model):
    auc_no_drift = _auc(model, windows["no_drift"])
    auc_concept = _auc(model, windows["concept_drift"])
    assert 0.78 <= auc_no_drift <= 0.90
    assert auc_no_drift - auc_concept >= 0.08


def test_covariate_drift_keeps_the_label_mechanism(windows, model):
    ref, cov = windows["reference"], windows["covariate_drift"]
    # attrition rises because the features moved ...
    assert cov[LABEL].mean() > ref[LABEL].mean() + 0.10
    # ... while P(y|x) is unchanged: the true reference mechanism stays calibrated and the
    # reference-trained model keeps ranking well
    expected_rate = float(np.mean(1.0 / (1.0 + np.exp(-attrition.attrition_logit(cov)))))
    assert abs(expected_rate - cov[LABEL].mean()) < 0.03
    assert _auc(model, cov) >= _auc(model, windows["no_drift"]) - 0.05


# 3. drift distances -------------------------------------------------------------------------------


def test_covariate_drift_is_detectable_and_no_drift_is_not(windows):
    ref, cov = windows["reference"], windows["covariate_drift"]
    assert _normalised_wasserstein(ref["satisfaction_score"], cov["satisfaction_score"]) > 0.1
    assert _normalised_wasserstein(ref["work_hours"], cov["work_hours"]) > 0.1
    assert cov["satisfaction_score"].mean() < ref["satisfaction_score"].mean() - 0.7
    assert cov["work_hours"].mean() > ref["work_hours"].mean() + 4
    for col in NUMERIC_FEATURES:
        assert _normalised_wasserstein(ref[col], windows["no_drift"][col]) < 0.1, col


def test_concept_drift_features_match_reference(windows):
    ref, con = windows["reference"], windows["concept_drift"]
    for col in NUMERIC_FEATURES:
        assert _normalised_wasserstein(ref[col], con[col]) < 0.1, col
    departments = sorted(attrition.DEPARTMENTS)
    p = ref["department"].value_counts(normalize=True).reindex(departments, fill_value=0)
    q = con["department"].value_counts(normalize=True).reindex(departments, fill_value=0)
    assert jensenshannon(p, q) < 0.1


# 4. fairness ---------------------------------------------------------------------------------------


def test_disparate_impact_across_departments(windows, model):
    frame = windows["no_drift"]
    positive = model.predict_proba(frame[list(FEATURES)])[:, 1] >= 0.5
    rates = pd.Series(positive).groupby(frame["department"].to_numpy()).mean()
    assert len(rates) == len(attrition.DEPARTMENTS)
    assert rates.min() > 0
    assert rates.min() / rates.max() >= 0.8


# 5. shipped files ---------------------------------------------------------------------------------


def test_write_demo_data_matches_shipped_files(tmp_path):
    written = write_demo_data(tmp_path, seed=SEED)
    names = sorted(p.name for p in written)
    assert names == sorted(attrition.DEMO_FILES)
    assert names == sorted(p.name for p in SHIPPED.glob("*.csv")), "shipped data/attrition/*.csv differ"
    for path in written:
        assert path.read_bytes() == (SHIPPED / path.name).read_bytes(), (
            f"{path.name} differs from the script; regenerate it: {REGENERATE}"
        )


def test_shipped_files_have_the_documented_shapes():
    read = {name: pd.read_csv(SHIPPED / name) for name in attrition.DEMO_FILES}
    assert len(read["reference.csv"]) == 5000
    for name in ("current_no_drift.csv", "current_covariate_drift.csv", "current_concept_drift.csv"):
        assert list(read[name].columns) == list(COLUMNS) and len(read[name]) == 2000
    assert list(read["current_unlabelled.csv"].columns) == list(FEATURES)
    assert len(read["current_unlabelled.csv"]) == 2000
    assert "salary" not in read["bad_missing_column.csv"].columns
    assert len(read["bad_missing_column.csv"]) > 0
    bad_age = read["bad_wrong_type.csv"]["age"]
    assert bad_age.dtype == object
    assert pd.to_numeric(bad_age, errors="coerce").isna().sum() > 0
    assert read["bad_all_nan.csv"]["satisfaction_score"].isna().all()
    assert len(read["bad_all_nan.csv"]) > 0
    assert list(read["bad_empty.csv"].columns) == list(COLUMNS) and len(read["bad_empty.csv"]) == 0
    assert sum((SHIPPED / name).stat().st_size for name in attrition.DEMO_FILES) < 2_000_000

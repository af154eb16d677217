"""Nothing is specific to the demo: whole pipeline runs on datasets described only by a config file
(string labels, many columns, missing values, several categoricals, multiclass)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from ml.config import load_config
from ml.pipeline import run_pipeline
from tests.conftest import free_port


def make_frame(rows: slice, n_numeric: int, seed: int, shift: float = 0.0, classes: int = 2) -> pd.DataFrame:
    """Rows of ONE generated pool (make_classification's column shuffle depends on n_samples)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=6000, n_features=n_numeric, n_informative=8, n_classes=classes,
                               n_clusters_per_class=1, random_state=7, flip_y=0.05)
    x, y = x[rows], y[rows]
    n = len(y)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(n)
    frame = pd.DataFrame(x[idx], columns=[f"m{i:02d} score" for i in range(n_numeric)])
    frame.iloc[:, :5] += shift
    frame["region"] = rng.choice(["north", "south", "east", "west"], n)
    frame["plan"] = np.where(frame.iloc[:, 0] > 0, "pro", "basic")
    frame.loc[rng.random(n) < 0.03, "m03 score"] = np.nan  # a few missing values
    frame.loc[rng.random(n) < 0.02, "region"] = None
    labels = np.array(["churned", "stayed"]) if classes == 2 else np.array(["gold", "silver", "bronze"])
    frame["outcome"] = labels[y[idx]]
    return frame


def write(tmp_path, name: str, task: str, n_numeric: int, classes: int, **extra) -> tuple:
    folder = tmp_path / name
    folder.mkdir()
    make_frame(slice(0, 3000), n_numeric, 1, classes=classes).to_parquet(folder / "ref.parquet")
    make_frame(slice(3000, 4500), n_numeric, 2, classes=classes).to_csv(folder / "same.csv", index=False)
    make_frame(slice(4500, 6000), n_numeric, 3, shift=1.5, classes=classes).to_csv(folder / "shifted.csv",
                                                                                    index=False)
    config = {
        "name": name, "task": task, "target": "outcome",
        "features": {"numeric": [f"m{i:02d} score" for i in range(n_numeric)], "categorical": ["region", "plan"]},
        "data": {"reference": "ref.parquet", "current": "same.csv"},
        "deploy": {"port": free_port()}, "drift": {"drift_share": 0.1}, **extra,
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(config))
    return load_config(folder / "model.yaml"), folder


@pytest.mark.parametrize(("task", "classes", "extra"), [
    ("binary", 2, {"positive_class": "churned", "sensitive_feature": "region",
                   "model": {"estimator": "random_forest", "params": {"n_estimators": 40}}}),
    ("multiclass", 3, {"gates": {"min_metrics": {"accuracy": 0.5}}}),
])
def test_pipeline_on_an_unseen_dataset(ct_home, tmp_path, task, classes, extra):
    config, folder = write(tmp_path, f"unseen-{task}", task, 30, classes, **extra)
    first = run_pipeline(config, "r1").to_dict()
    assert first["status"] == "promoted", (first["errors"], first["failed_gates"], first["deployment"])
    assert first["data"]["rows"] == {"reference": 3000, "current": 1500, "current_labelled": 1500}
    assert first["gates"]["onnx_parity"]["passed"]
    shifted = run_pipeline(config.with_data(current=str(folder / "shifted.csv")), "r2").to_dict()
    assert shifted["decision"] == "retrain" and "data_drift" in shifted["triggers"]
    assert shifted["drift"]["features"]["m00 score"]["drifted"] is True
    assert shifted["drift"]["features"]["m20 score"]["drifted"] is False
    if task == "binary":
        assert shifted["gates"]["fairness"]["value"] is not None
    else:
        assert "not evaluated" in shifted["gates"]["fairness"]["detail"]


def test_sliding_reference_compares_with_the_champions_training_window(ct_home, tmp_path):
    """drift.reference: champion. Once a champion was trained on the shifted population, a new window from
    that same population is no drift (skip), where the fixed data.reference would retrain every run."""
    config, folder = write(tmp_path, "sliding", "binary", 30, 2, positive_class="churned",
                           drift={"drift_share": 0.1, "reference": "champion"})
    make_frame(slice(3000, 4500), 30, 4, shift=1.5).to_csv(folder / "shifted_again.csv", index=False)
    first = run_pipeline(config.with_data(current=str(folder / "shifted.csv")), "r1").to_dict()
    assert first["status"] == "promoted", (first["errors"], first["failed_gates"])
    assert first["drift"]["compared_with"].startswith("data.reference (no champion")
    assert first["drift"]["dataset_drift"] is True  # against the fixed reference the shift shows

    again = run_pipeline(config.with_data(current=str(folder / "shifted_again.csv")), "r2").to_dict()
    assert again["drift"]["compared_with"] == "the current window champion v1 was trained with"
    assert again["drift"]["dataset_drift"] is False, again["drift"]["features"]
    assert again["decision"] == "skip" and again["status"] == "skipped", again["reason"]

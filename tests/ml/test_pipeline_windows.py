"""What a run keeps of its windows, with a real MLflow store: only the model's columns reach the artifacts
(a window's `ssn` column never does), and a prediction log with a poisoned row is screened before it is
frozen into the run, the dropped row counted in the validate result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from ml.state import Step
from tests.conftest import DATA, write_config

SSN = "987-65-4321"


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out.extend(_artifacts(client, run_id, info.path) if info.is_dir else [info.path])
    return out


@pytest.mark.e2e
def test_no_column_but_the_models_reaches_the_artifacts(ct_home, tmp_path):
    from mlflow.artifacts import download_artifacts

    from ml.config import load_config
    from ml.pipeline import run_step
    from ml.state import CHECK_STEPS
    from ml.tracking import open_run

    current = pd.read_csv(DATA / "current_no_drift.csv").assign(ssn=SSN, email="someone@example.com")
    path = tmp_path / "current_with_ssn.csv"
    current.to_csv(path, index=False)
    config = load_config(write_config(tmp_path / "config", model={"estimator": "logistic_regression",
                                                                  "params": {"C": 1.0}},
                                      data={"current": str(path)}))
    ctx = open_run(config, "ssn")
    for step in (*CHECK_STEPS, Step.TRAIN, Step.GATES):
        run_step(step, open_run(ctx.config, ctx.run_key), **({"force_retrain": True} if step is Step.DECIDE else {}))
    paths = _artifacts(ctx.client, ctx.mlflow_run_id)
    assert "challenger/holdout.parquet" in paths and "windows/current.parquet" in paths
    model_columns = {*config.features.numeric, *config.features.categorical, config.target}
    for name in ("challenger/holdout.parquet", "windows/current.parquet"):
        local = download_artifacts(run_id=ctx.mlflow_run_id, artifact_path=name, dst_path=str(tmp_path / "dl"))
        columns = set(pd.read_parquet(local).columns)
        assert "ssn" not in columns and "email" not in columns, (name, columns)
        assert columns - model_columns <= {c for c in columns if c.startswith("__ct_")}, name
    for name in paths:  # nothing the run stored mentions the column or its values
        local = download_artifacts(run_id=ctx.mlflow_run_id, artifact_path=name, dst_path=str(tmp_path / "all"))
        data = open(local, "rb").read()
        assert SSN.encode() not in data and b"someone@example.com" not in data, name
    for dataset in ctx.client.get_run(ctx.mlflow_run_id).inputs.dataset_inputs:
        assert "ssn" not in dataset.dataset.schema and "email" not in dataset.dataset.schema


@pytest.mark.e2e
def test_a_poisoned_prediction_log_is_screened_before_it_is_frozen(ct_home, tmp_path):
    from ml.config import load_config
    from ml.contract import Quarantine
    from ml.pipeline import run_step
    from ml.predlog import PredictionLogWriter
    from ml.state import RunState, Validation
    from ml.tracking import open_run

    rows = pd.read_csv(DATA / "current_unlabelled.csv").head(500)
    records = rows.to_dict(orient="records")
    records[3] = records[3] | {"age": 200}
    writer = PredictionLogWriter(tmp_path / "log")
    start = datetime.now(UTC) - timedelta(hours=1)
    for i, features in enumerate(records):
        writer.log_prediction(f"{i:032x}", (start + timedelta(seconds=i)).timestamp(), "1", features, "0",
                              {"0": 0.8, "1": 0.2})
    writer.log_feedback(f"{1:032x}", start.timestamp() + 600, "1")
    writer.log_feedback(f"{1:032x}", start.timestamp() + 700, "0")  # a second label: ignored, counted
    writer.close()
    config = load_config(write_config(tmp_path / "config", data={"current": str(tmp_path / "log")}))
    ctx = open_run(config, "poisoned")
    validation = run_step(Step.VALIDATE, ctx).result
    assert isinstance(validation, Validation) and validation.passed, validation.problems
    current = validation.quarantine["current"]
    assert (current.rows, current.dropped, current.feedback_ignored) == (500, 1, 1)
    assert validation.summary()["quarantine"]["current"]["dropped"] == 1
    frozen = pd.read_parquet(ctx.artifact(validation.current_snapshot))
    assert len(frozen) == 499 and frozen["age"].max() <= 80
    assert frozen["attrition"].dropna().tolist() == ["1"]
    stored = RunState.load(open_run(ctx.config, ctx.run_key)).validation  # typed, back from the MLflow run
    assert stored.quarantine == validation.quarantine and isinstance(stored.quarantine["current"], Quarantine)

"""Batch scoring (ml.batch) against the real thing: a champion bootstrapped by the real pipeline (MLflow
store, ONNX, served by a real `python -m ml.serving` process on 127.0.0.1), its batch predictions compared
with what that server's POST /predict answers for the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATA, write_config

FEATURES = ["age", "tenure", "satisfaction_score", "performance_rating", "work_hours", "projects_count",
            "promotion_flag", "salary", "department"]


@pytest.fixture(scope="module")
def champion(module_ct_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """v1 of the demo model, promoted and serving (its state names the URL)."""
    from ml.config import load_config
    from ml.deploy.local import read_state
    from ml.pipeline import run_pipeline

    config = load_config(write_config(tmp_path_factory.mktemp("cfg"), batch={"chunk_rows": 128, "id_column": "row"}))
    record = run_pipeline(config, "bootstrap")
    assert record.status == "promoted", record.to_dict()
    state = read_state(config.name)
    return {"config": config, "url": state.url, "version": record.champion_version}


def _rows(n: int = 300):
    import pandas as pd

    frame = pd.read_csv(DATA / "current_no_drift.csv").head(n)
    frame.insert(0, "row", range(len(frame)))
    return frame


def test_batch_matches_online_predictions(champion: dict, tmp_path: Path) -> None:
    import pandas as pd

    from ml.batch import score_batch

    frame = _rows()
    source = tmp_path / "rows.parquet"
    frame.to_parquet(source, index=False)
    result = score_batch(champion["config"], str(source), str(tmp_path / "out"), run_key="b1")
    scored = pd.read_parquet(result.output_path)
    assert result.rows == len(frame) == len(scored) and result.chunks == 3  # 128-row chunks
    assert result.version == champion["version"]
    assert set(scored["model_version"]) == {champion["version"]} and set(scored["model_sha256"]) == {result.sha256}
    assert scored["row"].tolist() == frame["row"].tolist()
    records = [{c: (str(v) if c == "department" else float(v)) for c, v in row.items()}
               for row in frame[FEATURES].to_dict(orient="records")]
    with httpx.Client(base_url=champion["url"], timeout=30) as client:
        online = client.post("/predict/batch", json={"records": records}).json()["predictions"]
    assert [p["label"] for p in online] == scored["label"].tolist()
    for p, (_, row) in zip(online, scored.iterrows(), strict=True):
        assert p["model_version"] == row["model_version"]
        for cls, value in p["probabilities"].items():
            assert row[f"proba_{cls}"] == pytest.approx(value, abs=1e-6)


def test_csv_and_parquet_score_alike_and_are_logged(champion: dict, tmp_path: Path) -> None:
    import pandas as pd

    from ml.batch import score_batch
    from ml.deploy.local import served_log
    from ml.predlog import read_prediction_log

    frame = _rows(200)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    config = champion["config"]
    csv = score_batch(config, str(tmp_path / "rows.csv"), str(tmp_path / "a.parquet"), run_key="csv")
    pq = score_batch(config, str(tmp_path / "rows.parquet"), str(tmp_path / "b.parquet"), run_key="pq",
                     log_predictions=False)
    a, b = pd.read_parquet(csv.output_path), pd.read_parquet(pq.output_path)
    assert a["label"].tolist() == b["label"].tolist()
    assert a["proba_1"].to_numpy() == pytest.approx(b["proba_1"].to_numpy(), abs=1e-9)
    assert pq.prediction_log is None and csv.prediction_log is not None
    lines = [json.loads(line) for line in Path(csv.prediction_log).read_text().splitlines()]
    assert len(lines) == 200 and {line["source"] for line in lines} == {"batch"}
    assert [line["prediction_id"] for line in lines] == a["prediction_id"].tolist()
    logged = read_prediction_log(served_log(config))
    assert set(a["prediction_id"]) <= set(logged["prediction_id"])  # drift windows see batch traffic
    again = score_batch(config, str(tmp_path / "rows.csv"), str(tmp_path / "a.parquet"), run_key="csv")
    assert again.prediction_log == csv.prediction_log  # a re-run replaces its log file: no duplicates
    assert len(Path(again.prediction_log).read_text().splitlines()) == 200


def test_bad_input_leaves_nothing_behind(champion: dict, tmp_path: Path) -> None:
    from ml.batch import score_batch
    from ml.deploy.local import served_log
    from ml.errors import DataError

    frame = _rows(50).drop(columns=["salary"])
    frame.to_parquet(tmp_path / "bad.parquet", index=False)
    before = sorted(served_log(champion["config"]).rglob("*"))
    with pytest.raises(DataError, match=r"column\(s\) \['salary'\] missing"):
        score_batch(champion["config"], str(tmp_path / "bad.parquet"), str(tmp_path / "out"), run_key="bad")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert sorted(served_log(champion["config"]).rglob("*")) == before
    with pytest.raises(DataError, match="not found"):
        score_batch(champion["config"], str(tmp_path / "nope.csv"), str(tmp_path / "out"))


def test_cli_batch(champion: dict, tmp_path: Path) -> None:
    import subprocess
    import sys

    _rows(64).to_parquet(tmp_path / "rows.parquet", index=False)
    config = Path(champion["config"].source)
    done = subprocess.run([sys.executable, "-m", "ml", "batch", "--config", str(config), "--input",
                           str(tmp_path / "rows.parquet"), "--output", str(tmp_path / "o.parquet"), "--no-log"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["rows"] == 64 and result["version"] == champion["version"] and result["prediction_log"] is None

"""Shadow and canary in the serving process, with real server processes on 127.0.0.1: the champion's
answers are unchanged by a shadow that scores every request (logged beside them), a canary answers its
share by a stable key, smoke traffic always meets the champion, and bad variant settings are refused."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from ml.export import OnnxModel, sha256_bytes, to_onnx
from ml.predlog import read_prediction_records
from ml.serving.variants import bucket
from tests.ml.serving.conftest import NUMERIC, sample_records


@pytest.fixture(scope="module")
def challenger(trained, tmp_path_factory) -> tuple[Path, str]:
    """A second model of the same features and classes, trained on drifted data (other answers)."""
    from ml.challenger import fit_challenger
    from ml.datasets.attrition import generate

    fitted = fit_challenger(trained.config, generate("covariate_drift", 1200, 3), None)
    data = to_onnx(fitted.pipeline, trained.config, fitted.data.classes)
    path = tmp_path_factory.mktemp("challenger") / "challenger.onnx"
    path.write_bytes(data)
    return path, sha256_bytes(data)


def _base_env(trained, log_dir: Path) -> dict[str, str]:
    return {"CT_MODEL_URI": str(trained.path), "CT_MODEL_SHA256": trained.sha256, "CT_MODEL_VERSION": "1",
            "CT_PREDICTION_LOG_DIR": str(log_dir)}


def _expected(path: Path, records: list[dict]) -> list[dict[str, float]]:
    model = OnnxModel.load(path)
    frame = pd.DataFrame(records)
    proba = model.predict_proba(frame)
    return [dict(zip([str(c) for c in model.classes], row, strict=True)) for row in proba.tolist()]


def test_shadow_scores_every_request_without_changing_answers(trained, challenger, start_server, tmp_path):
    shadow_path, shadow_sha = challenger
    log_dir = tmp_path / "log"
    server = start_server(_base_env(trained, log_dir) | {
        "CT_SHADOW_MODEL_PATH": str(shadow_path), "CT_SHADOW_MODEL_SHA256": shadow_sha,
        "CT_SHADOW_MODEL_VERSION": "2"})
    records = sample_records(300, seed=5)
    client = server.client()

    def one(record: dict) -> dict:
        response = client.post("/predict", json=record)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, records[:250]))
    batch = client.post("/predict/batch", json={"records": records[250:]})
    assert batch.status_code == 200
    answers += batch.json()["predictions"]
    stats = client.get("/variants").json()
    assert stats["variants"]["shadow"]["version"] == "2"
    assert server.stop(signal.SIGTERM) == 0

    champion = _expected(trained.path, records)
    shadow = _expected(shadow_path, records)
    assert all(a["model_version"] == "1" for a in answers)
    for answer, want in zip(answers, champion, strict=True):
        assert answer["probabilities"] == pytest.approx(want, abs=1e-6)
    lines = {r["prediction_id"]: r for r in read_prediction_records(log_dir)}
    assert len(lines) == 300
    by_id = {a["prediction_id"]: i for i, a in enumerate(answers)}
    for pid, line in lines.items():
        assert line["shadow"]["model_version"] == "2"
        assert line["shadow"]["probabilities"] == pytest.approx(shadow[by_id[pid]], abs=1e-6)
        assert line["output"]["probabilities"] == pytest.approx(champion[by_id[pid]], abs=1e-6)
    assert "variant" not in next(iter(lines.values()))


def test_canary_answers_its_share_by_key_and_never_the_smoke_test(trained, challenger, start_server, tmp_path):
    canary_path, canary_sha = challenger
    log_dir = tmp_path / "log"
    server = start_server(_base_env(trained, log_dir) | {
        "CT_CANARY_MODEL_PATH": str(canary_path), "CT_CANARY_MODEL_SHA256": canary_sha,
        "CT_CANARY_MODEL_VERSION": "2", "CT_CANARY_FRACTION": "0.3"})
    client = server.client()
    records = sample_records(400, seed=8)
    answers = [client.post("/predict", json=r).json() for r in records]
    smoke = [client.post("/predict", json=r, headers={"X-CT-Traffic": "smoke"}).json() for r in records[:40]]
    stats = client.get("/variants").json()
    assert server.stop() == 0

    canary = [a for a in answers if a["model_version"] == "2"]
    assert 0.22 < len(canary) / len(answers) < 0.38
    for a in answers:  # the prediction id decides: the same hash anywhere
        assert (a["model_version"] == "2") == (bucket(a["prediction_id"]) < 0.3)
    assert all(a["model_version"] == "1" for a in smoke)
    assert stats["variants"]["canary"]["requests"] == len(canary) and stats["variants"]["canary"]["errors"] == 0
    lines = read_prediction_records(log_dir)
    assert {(r["model_version"], r["variant"]) for r in lines} == {("1", "champion"), ("2", "canary")}
    want = _expected(canary_path, [records[i] for i, a in enumerate(answers) if a["model_version"] == "2"])
    for got, expected in zip(canary, want, strict=True):
        assert got["probabilities"] == pytest.approx(expected, abs=1e-6)


def test_canary_key_column_routes_every_record_of_a_key_alike(trained, challenger, start_server, tmp_path):
    canary_path, canary_sha = challenger
    server = start_server(_base_env(trained, tmp_path / "log") | {
        "CT_CANARY_MODEL_PATH": str(canary_path), "CT_CANARY_MODEL_SHA256": canary_sha,
        "CT_CANARY_MODEL_VERSION": "2", "CT_CANARY_FRACTION": "0.5", "CT_CANARY_KEY": "department"})
    records = sample_records(200, seed=9)
    out = server.client().post("/predict/batch", json={"records": records}).json()["predictions"]
    seen: dict[str, set[str]] = {}
    for record, answer in zip(records, out, strict=True):
        seen.setdefault(record["department"], set()).add(answer["model_version"])
    assert all(len(versions) == 1 for versions in seen.values())
    assert {v for versions in seen.values() for v in versions} == {"1", "2"}
    assert all((bucket(d) < 0.5) == (seen[d] == {"2"}) for d in seen)


@pytest.mark.parametrize(("extra", "code", "message"), [
    ({"CT_CANARY_MODEL_PATH": "{path}", "CT_CANARY_MODEL_SHA256": "{sha}"}, 2, "strictly between 0 and 1"),
    ({"CT_CANARY_MODEL_PATH": "{path}"}, 2, "needs CT_CANARY_MODEL_SHA256"),
    ({"CT_SHADOW_MODEL_PATH": "{path}", "CT_SHADOW_MODEL_SHA256": "0" * 64}, 3, "sha256 mismatch"),
    ({"CT_CANARY_MODEL_PATH": "{path}", "CT_CANARY_MODEL_SHA256": "{sha}", "CT_CANARY_FRACTION": "0.1",
      "CT_CANARY_KEY": "nope"}, 3, "CT_CANARY_KEY='nope' is not a feature"),
])
def test_bad_variant_settings_are_refused_at_start(trained, challenger, start_server, tmp_path, extra, code, message):
    path, sha = challenger
    env = _base_env(trained, tmp_path / "log") | {k: v.format(path=path, sha=sha) for k, v in extra.items()}
    server = start_server(env, ready=False)
    assert server.proc.wait(60) == code
    assert message in server.output


def test_a_model_of_other_features_is_refused_as_shadow(trained, start_server, tmp_path):
    from ml.challenger import fit_challenger
    from ml.config import parse_config
    from ml.datasets.attrition import generate
    from tests.ml.serving.conftest import config_dict

    raw = config_dict()
    raw["features"] = {"numeric": NUMERIC[:-1], "categorical": ["department"]}
    config = parse_config(raw)
    fitted = fit_challenger(config, generate("reference", 600, 1).drop(columns=["salary"]), None)
    data = to_onnx(fitted.pipeline, config, fitted.data.classes)
    other = tmp_path / "other.onnx"
    other.write_bytes(data)
    server = start_server(_base_env(trained, tmp_path / "log") | {
        "CT_SHADOW_MODEL_PATH": str(other), "CT_SHADOW_MODEL_SHA256": sha256_bytes(data)}, ready=False)
    assert server.proc.wait(60) == 3
    assert "refusing the shadow model" in server.output


def test_several_workers_each_load_the_shadow_and_log_its_scores(trained, challenger, start_server, tmp_path):
    shadow_path, shadow_sha = challenger
    log_dir = tmp_path / "log"
    server = start_server(_base_env(trained, log_dir) | {
        "CT_WORKERS": "2", "CT_SHADOW_MODEL_PATH": str(shadow_path), "CT_SHADOW_MODEL_SHA256": shadow_sha,
        "CT_SHADOW_MODEL_VERSION": "2"})
    records = sample_records(120, seed=4)
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda r: server.client().post("/predict", json=r).status_code, records))
    assert codes == [200] * 120
    assert server.stop() == 0
    lines = read_prediction_records(log_dir)
    assert len(lines) == 120 and all(line["shadow"]["model_version"] == "2" for line in lines)
    assert len(list((log_dir / "predictions").glob("date=*/*.jsonl"))) >= 1


def test_a_full_shadow_queue_logs_the_answer_without_the_shadow_score(trained, challenger, tmp_path):
    from fastapi.testclient import TestClient

    from ml.serving.app import create_app
    from ml.serving.settings import Settings

    shadow_path, shadow_sha = challenger
    settings = Settings(model_uri=str(trained.path), expected_sha256=trained.sha256, model_version="1",
                        prediction_log_dir=tmp_path / "log", shadow_model_path=shadow_path,
                        shadow_model_sha256=shadow_sha, shadow_model_version="2")
    app = create_app(settings)
    app.state.service.variants._capacity = 3  # records the shadow may hold queued (CT_LOG_QUEUE_SIZE)
    with TestClient(app) as client:
        big = client.post("/predict/batch", json={"records": sample_records(5, seed=1)})
        small = client.post("/predict/batch", json={"records": sample_records(2, seed=2)})
        assert big.status_code == small.status_code == 200
        assert client.get("/variants").json()["shadow_dropped"] == 5
    lines = read_prediction_records(tmp_path / "log")
    assert len(lines) == 7 and sum("shadow" in line for line in lines) == 2

"""In-process checks of the app factory, settings and entrypoint: the hot-path middleware and the plain
FastAPI routes answer identically, settings name the offending variable, and `main` refuses bad models
with its documented exit codes (the real-process tests are in test_serving_process.py)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ml.serving.__main__ import EXIT_MODEL_REFUSED, EXIT_SETTINGS, main
from ml.serving.app import create_app
from ml.serving.model import ModelLoadError, resolve_model
from ml.serving.settings import Settings, SettingsError
from tests.ml.serving.conftest import parse_metrics


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-routes"])
def app_client(request, trained, tmp_path):
    settings = Settings(model_uri=str(trained.path), expected_sha256=trained.sha256, model_version="5",
                        prediction_log_dir=tmp_path / "log", max_batch=10, max_body_bytes=4096)
    app = create_app(settings, resolve_model(settings), fast_path=request.param)
    with TestClient(app) as client:
        yield client
    assert len(list((tmp_path / "log" / "predictions").rglob("*.jsonl"))) <= 1


CASES = [
    ("/predict", "valid", 200),
    ("/predict", {"age": "NaN"}, 422),
    ("/predict", {"promotion_flag": False}, 422),
    ("/predict", {"department": None}, 200),
    ("/predict", {"department": 2.0}, 422),  # canonicalised to "2": a category the model never saw
    ("/predict", {"department": "Sales"}, 200),
    ("/predict", {"department": ["x"]}, 422),
    ("/predict", "missing", 422),
    ("/predict", b"{nope", 400),
    ("/predict", b"", 400),
    ("/predict", b'{"a": "' + b"x" * 5000 + b'"}', 413),
    ("/predict/batch", {"records": []}, 422),
    ("/predict/batch", "batch11", 413),
    ("/predict/batch", "batch2", 200),
]


@pytest.mark.parametrize(("path", "change", "status"), CASES)
def test_both_paths_answer_the_same(app_client, record, path, change, status):
    if isinstance(change, bytes):
        body = change
    elif change == "valid":
        body = json.dumps(record).encode()
    elif change == "missing":
        body = json.dumps({k: v for k, v in record.items() if k != "age"}).encode()
    elif isinstance(change, str) and change.startswith("batch"):
        body = json.dumps({"records": [record] * int(change[5:])}).encode()
    elif path == "/predict":
        body = json.dumps(record | change).encode()
    else:
        body = json.dumps(change).encode()
    response = app_client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    if status == 200 and path == "/predict":
        assert response.json()["model_version"] == "5"
    if status >= 400:
        assert set(response.json()) == {"detail"}


def test_both_paths_content_type_and_feedback(app_client, record):
    assert app_client.post("/predict", content=json.dumps(record), headers={"content-type": "text/csv"}
                           ).status_code == 415
    pid = app_client.post("/predict", json=record).json()["prediction_id"]
    assert app_client.post("/feedback", json={"prediction_id": pid, "label": "1"}).status_code == 202
    assert app_client.get("/ready").json() == {"status": "ready", "model_version": "5", "server_pid": os.getpid()}
    assert parse_metrics(app_client.get("/metrics").text)["ct_feedback_total"].total("ct_feedback_total") == 1


def test_openapi_documents_the_request_schema(app_client):
    spec = app_client.get("/openapi.json").json()
    schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"][-1] == "department" and schema["additionalProperties"] is False
    assert set(spec["paths"]) >= {"/predict", "/predict/batch", "/feedback", "/health", "/ready", "/model",
                                  "/metrics"}


def test_ready_is_503_outside_the_lifespan(trained):
    settings = Settings(model_uri=str(trained.path))
    app = create_app(settings, resolve_model(settings))
    client = TestClient(app)  # no `with`: lifespan not run, model not warmed up
    response = client.get("/ready")
    assert response.status_code == 503 and response.json()["status"] == "starting"
    assert client.get("/health").json() == {"status": "ok"}


def test_settings_from_env_and_flags(tmp_path):
    env = {"CT_MODEL_URI": "file:///m.onnx", "CT_PORT": "9000", "CT_WORKERS": "2", "CT_MAX_BATCH": "7",
           "CT_MODEL_SHA256": "AB" * 32, "CT_PREDICTION_LOG_DIR": str(tmp_path)}
    settings = Settings.from_env(env)
    assert (settings.model_uri, settings.port, settings.workers, settings.max_batch) == ("/m.onnx", 9000, 2, 7)
    assert settings.expected_sha256 == "ab" * 32 and settings.prediction_log_dir == tmp_path
    assert settings.host == "127.0.0.1" and settings.max_body_bytes == 1 << 20
    flagged = Settings.from_args(["--port", "9100", "--model-uri", "models:/m@champion", "--workers", "1"], env)
    assert flagged.port == 9100 and flagged.workers == 1 and flagged.registry_ref == ("m", None, "champion")
    assert Settings.from_env({"CT_MODEL_URI": "models:/m/3"}).registry_ref == ("m", "3", None)
    assert Settings.from_env(Settings.from_env(env).to_env()) == settings
    shared = Settings.from_args(["--reuse-port", "1", "--smoke-port", "9101"], env)
    assert (shared.reuse_port, shared.smoke_port, settings.reuse_port, settings.smoke_port) == (True, 9101, False, None)
    assert Settings.from_env(shared.to_env()) == shared


def test_workers_keep_following_the_alias(tmp_path):
    """Workers get the verified local file, pinned, plus the alias URI they go on following."""
    settings = Settings.from_env({"CT_MODEL_URI": "models:/m@champion", "CT_MODEL_FOLLOW_S": "30"})
    assert settings.alias_uri == "models:/m@champion"
    worker = Settings.from_env(settings.with_model(tmp_path / "m.onnx", "ab" * 32, "4").to_env())
    assert worker.model_uri == str(tmp_path / "m.onnx") and worker.registry_ref is None
    assert (worker.follow_s, worker.alias_uri, worker.model_version) == (30, "models:/m@champion", "4")
    plain = Settings.from_env({"CT_MODEL_URI": "models:/m@champion"}).with_model(tmp_path / "m.onnx", "ab" * 32, "4")
    assert plain.follow_s == 0 and plain.alias_uri is None


@pytest.mark.parametrize(("env", "named"), [
    ({}, "CT_MODEL_URI"),
    ({"CT_MODEL_URI": "m.onnx", "CT_PORT": "http"}, "CT_PORT"),
    ({"CT_MODEL_URI": "m.onnx", "CT_PORT": "70000"}, "CT_PORT"),
    ({"CT_MODEL_URI": "m.onnx", "CT_WORKERS": "0"}, "CT_WORKERS"),
    ({"CT_MODEL_URI": "m.onnx", "CT_MODEL_SHA256": "abc"}, "CT_MODEL_SHA256"),
    ({"CT_MODEL_URI": "models:/only-name"}, "CT_MODEL_URI"),
    ({"CT_MODEL_URI": "m.onnx", "CT_LOG_LEVEL": "LOUD"}, "CT_LOG_LEVEL"),
    ({"CT_MODEL_URI": "models:/m/3", "CT_MODEL_FOLLOW_S": "30"}, "CT_MODEL_FOLLOW_S"),
    ({"CT_MODEL_URI": "m.onnx", "CT_MODEL_FOLLOW_S": "soon"}, "CT_MODEL_FOLLOW_S"),
    ({"CT_MODEL_URI": "m.onnx", "CT_REUSE_PORT": "yes please"}, "CT_REUSE_PORT"),
    ({"CT_MODEL_URI": "m.onnx", "CT_SMOKE_PORT": "0"}, "CT_SMOKE_PORT"),
])
def test_settings_errors_name_the_variable(env, named):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_main_exit_codes(trained, tmp_path, monkeypatch, caplog):
    for key in ("CT_MODEL_URI", "CT_MODEL_SHA256", "CT_PORT"):
        monkeypatch.delenv(key, raising=False)
    caplog.set_level(logging.INFO)
    assert main([]) == EXIT_SETTINGS
    assert main(["--model-uri", str(tmp_path / "absent.onnx")]) == EXIT_MODEL_REFUSED
    assert "not found" in caplog.text
    assert main(["--model-uri", str(trained.path), "--expected-sha256", "f" * 64]) == EXIT_MODEL_REFUSED
    assert f"expected {'f' * 64}, actual {trained.sha256}" in caplog.text


def test_external_data_model_is_refused(trained, tmp_path):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_model(str(trained.path))
    for tensor in proto.graph.initializer:  # raw_data is what external storage moves out of the file
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    path = tmp_path / "external.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").is_file()
    with pytest.raises(ModelLoadError, match="external data"):
        resolve_model(Settings(model_uri=str(path)))


def test_multiclass_label_is_argmax(tmp_path):
    from ml.challenger import fit_challenger
    from ml.config import parse_config
    from ml.export import to_onnx

    rng = __import__("numpy").random.default_rng(3)
    import pandas as pd

    n = 300
    frame = pd.DataFrame({"x": rng.normal(size=n), "g": rng.choice(["a", "b"], size=n)})
    frame["y"] = pd.cut(frame["x"], [-10, -0.5, 0.5, 10], labels=["low", "mid", "high"]).astype(str)
    config = parse_config({"name": "multi", "task": "multiclass", "target": "y",
                           "features": {"numeric": ["x"], "categorical": ["g"]}, "data": {"reference": "r.csv"}})
    challenger = fit_challenger(config, frame, None)
    path = Path(tmp_path / "multi.onnx")
    path.write_bytes(to_onnx(challenger.pipeline, config, challenger.data.classes))
    settings = Settings(model_uri=str(path))
    with TestClient(create_app(settings, resolve_model(settings))) as client:
        body = client.post("/predict", json={"x": 3.0, "g": "a"}).json()
        assert body["label"] == "high" and max(body["probabilities"], key=body["probabilities"].get) == "high"
        assert client.post("/feedback", json={"prediction_id": body["prediction_id"], "label": "mid"}
                           ).status_code == 503  # logging disabled


def test_smoke_traffic_is_marked_in_the_prediction_log(app_client, record, tmp_path):
    """X-CT-Traffic (what the deploy smoke test sends) reaches the log; the window reader leaves it out."""
    from ml.predlog import read_prediction_log

    user = app_client.post("/predict", json=record).json()["prediction_id"]
    smoke = app_client.post("/predict/batch", json={"records": [record]}, headers={"X-CT-Traffic": "smoke"})
    assert smoke.status_code == 200
    app_client.__exit__(None, None, None)  # lifespan end: the writer drains and closes
    assert read_prediction_log(tmp_path / "log")["prediction_id"].tolist() == [user]
    assert len(read_prediction_log(tmp_path / "log", include_smoke=True)) == 2

"""The server holds requests to the pipeline's data contract, authenticates its POST endpoints when a token is
set, takes one feedback label per prediction, and answers a deeply nested body with a 4xx: through the
hot-path middleware and the plain FastAPI routes (in-process ASGI client), and once through a real process."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient

from ml.predlog import read_prediction_log
from ml.serving.app import create_app
from ml.serving.model import resolve_model
from ml.serving.settings import Settings, SettingsError
from tests.ml.serving.conftest import config_dict

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def contract_model(tmp_path_factory):
    """A model whose config has a contract: age in [18, 70], department limited to four values."""
    from ml.challenger import fit_challenger
    from ml.config import parse_config
    from ml.datasets.attrition import generate
    from ml.export import sha256_bytes, to_onnx

    raw = config_dict() | {"model": {"estimator": "logistic_regression"},
                           "contract": {"columns": {"age": {"min": 18, "max": 70}, "department": {
                               "allowed": ["Sales", "Engineering", "HR", "Finance", "Marketing", "Operations",
                                           "Legal"]}}}}
    config = parse_config(raw)
    reference = generate("reference", 600, 3)
    reference = reference[reference["age"].between(18, 70)]
    challenger = fit_challenger(config, reference, None)
    data = to_onnx(challenger.pipeline, config, challenger.data.classes)
    path = tmp_path_factory.mktemp("contract-model") / "model.onnx"
    path.write_bytes(data)
    return path, sha256_bytes(data)


def _client(model, tmp_path, fast_path: bool, **settings: object) -> TestClient:
    path, sha = model
    built = Settings(model_uri=str(path), expected_sha256=sha, model_version="3",
                     prediction_log_dir=tmp_path / "log", **settings)
    return TestClient(create_app(built, resolve_model(built), fast_path=fast_path))


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-routes"])
def fast_path(request) -> bool:
    return request.param


def test_out_of_contract_values_are_refused_naming_column_and_value(contract_model, tmp_path, fast_path, record):
    with _client(contract_model, tmp_path, fast_path) as client:
        assert client.post("/predict", json=record | {"age": 40}).status_code == 200
        too_old = client.post("/predict", json=record | {"age": 200})
        assert too_old.status_code == 422
        assert "'age' = 200 is outside the data contract's range [18, 70]" in too_old.json()["detail"]
        not_allowed = client.post("/predict", json=record | {"department": "Pirates"})
        assert not_allowed.status_code == 422
        assert "'department' = 'Pirates' is not in the data contract's allowed list" in not_allowed.json()["detail"]
        unseen = client.post("/predict", json=record | {"department": "Legal"})  # allowed, never trained on
        assert unseen.status_code == 422
        assert "'department' = 'Legal' is a category the model never saw" in unseen.json()["detail"]
        batch = client.post("/predict/batch", json={"records": [record, record | {"age": 5}]})
        assert batch.status_code == 422 and batch.json()["detail"].startswith("records[1]: numeric feature 'age'")
    lines = list((tmp_path / "log" / "predictions").rglob("*.jsonl"))
    assert sum(len(f.read_text().splitlines()) for f in lines) == 1  # only the valid request was logged


@pytest.mark.parametrize("variant", ["none", "shadow", "canary"])
def test_mark_accepts_unseen_categories_and_marks_them_in_the_log(contract_model, tmp_path, fast_path, record,
                                                                  variant):
    """Marked alike while a shadow scores every request or a canary answers half of them (the champion's
    categories decide what is unseen)."""
    path, sha = contract_model
    beside = {} if variant == "none" else {f"{variant}_model_path": path, f"{variant}_model_sha256": sha,
                                           f"{variant}_model_version": "4"}
    beside |= {"canary_fraction": 0.5} if variant == "canary" else {}
    with _client(contract_model, tmp_path, fast_path, unseen_category="mark", **beside) as client:
        marked = client.post("/predict", json=record | {"department": "Legal"})
        assert marked.status_code == 200 and marked.json()["unseen"] == ["department"]
        plain = client.post("/predict", json=record)
        assert plain.status_code == 200 and "unseen" not in plain.json()
        batch = client.post("/predict/batch", json={"records": [record, record | {"department": "Legal"}]})
        assert [p.get("unseen") for p in batch.json()["predictions"]] == [None, ["department"]]
        assert client.post("/predict", json=record | {"age": 200}).status_code == 422  # ranges still hold
    lines = [json.loads(line) for f in (tmp_path / "log" / "predictions").rglob("*.jsonl")
             for line in f.read_text().splitlines()]
    assert sorted(bool(line.get("unseen")) for line in lines) == [False, False, True, True]
    assert read_prediction_log(tmp_path / "log").attrs["marked_unseen"] == 2


def test_the_token_is_required_when_set(contract_model, tmp_path, fast_path, record):
    with _client(contract_model, tmp_path, fast_path, api_token=TOKEN) as client:
        for path, body in (("/predict", record), ("/predict/batch", {"records": [record]}),
                           ("/feedback", {"prediction_id": uuid.uuid4().hex, "label": "1"})):
            missing = client.post(path, json=body)
            assert missing.status_code == 401, path
            assert "missing bearer token" in missing.json()["detail"]
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = client.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}x"})
            assert wrong.status_code == 401 and "wrong bearer token" in wrong.json()["detail"]
            basic = client.post(path, json=body, headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status_code == 401
        assert client.post("/predict", json=record, headers=AUTH).status_code == 200
        assert client.get("/ready").status_code == 200  # probes need no token
        assert client.get("/metrics").status_code == 200


def test_feedback_is_accepted_once_per_prediction(contract_model, tmp_path, fast_path, record):
    with _client(contract_model, tmp_path, fast_path) as client:
        first, second = (client.post("/predict", json=record).json()["prediction_id"] for _ in range(2))
        assert client.post("/feedback", json={"prediction_id": first, "label": "1"}).status_code == 202
        again = client.post("/feedback", json={"prediction_id": first, "label": "0"})
        assert again.status_code == 409 and first in again.json()["detail"]
        both = client.post("/feedback", json={"items": [{"prediction_id": second, "label": "0"},
                                                        {"prediction_id": first, "label": "0"}]})
        assert both.status_code == 409  # nothing of the request is stored, `second` included
        twice = client.post("/feedback", json={"items": [{"prediction_id": second, "label": "0"},
                                                         {"prediction_id": second, "label": "1"}]})
        assert twice.status_code == 409 and second in twice.json()["detail"]
        assert client.post("/feedback", json={"prediction_id": second, "label": "0"}).status_code == 202
    # a restarted server remembers what the log holds
    with _client(contract_model, tmp_path, fast_path) as client:
        assert client.post("/feedback", json={"prediction_id": second, "label": "1"}).status_code == 409
    labels = read_prediction_log(tmp_path / "log", label_column="attrition").set_index("prediction_id")["attrition"]
    assert labels[first] == "1" and labels[second] == "0"


def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


@pytest.mark.parametrize("body", [b"[" * 1000 + b"]" * 1000, _nested(1000), b'{"records":' + b"[" * 998 + b"]" * 998
                                  + b"}", b'{"prediction_id": ' + b"[" * 995 + b"]" * 995 + b', "label": 1}'],
                         ids=["arrays", "objects", "records", "prediction_id"])
def test_deeply_nested_json_is_a_4xx_with_a_detail(contract_model, tmp_path, fast_path, body):
    assert len(body) < 8 * 1024
    with _client(contract_model, tmp_path, fast_path) as client:
        for path in ("/predict", "/predict/batch", "/feedback"):
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (path, response.text)
            assert set(response.json()) == {"detail"}


def test_token_settings(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"CT_MODEL_URI": "m.onnx", "CT_API_TOKEN_FILE": str(token_file), "CT_API_TOKEN": "other"}
    settings = Settings.from_env(env)
    assert settings.api_token == TOKEN and TOKEN not in repr(settings)
    assert settings.to_env()["CT_API_TOKEN_FILE"] == str(token_file) and "CT_API_TOKEN" not in settings.to_env()
    assert Settings.from_env({"CT_MODEL_URI": "m.onnx", "CT_API_TOKEN": TOKEN}).to_env()["CT_API_TOKEN"] == TOKEN
    with pytest.raises(SettingsError, match="CT_API_TOKEN is set but empty"):
        Settings.from_env({"CT_MODEL_URI": "m.onnx", "CT_API_TOKEN": " "})
    with pytest.raises(SettingsError, match="CT_API_TOKEN_FILE=.*cannot read it"):
        Settings.from_env({"CT_MODEL_URI": "m.onnx", "CT_API_TOKEN_FILE": str(tmp_path / "nope")})
    with pytest.raises(SettingsError, match="CT_UNSEEN_CATEGORY='maybe': expected refuse or mark"):
        Settings.from_env({"CT_MODEL_URI": "m.onnx", "CT_UNSEEN_CATEGORY": "maybe"})


def test_a_real_server_with_a_token_file(contract_model, start_server, tmp_path, record, monkeypatch):
    path, sha = contract_model
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = start_server({"CT_MODEL_URI": str(path), "CT_MODEL_SHA256": sha, "CT_API_TOKEN_FILE": str(token_file),
                           "CT_PREDICTION_LOG_DIR": str(tmp_path / "log")})
    client = server.client()
    assert client.post("/predict", json=record).status_code == 401
    answer = client.post("/predict", json=record, headers=AUTH)
    assert answer.status_code == 200
    pid = answer.json()["prediction_id"]
    deep = client.post("/feedback", content=_nested(1000), headers=AUTH | {"content-type": "application/json"})
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["detail"]
    assert client.post("/feedback", json={"prediction_id": pid, "label": 1}, headers=AUTH).status_code == 202
    assert client.post("/feedback", json={"prediction_id": pid, "label": 0}, headers=AUTH).status_code == 409
    assert TOKEN not in server.output
    # a deploy's smoke test authenticates with the deployer's own token, and fails without it
    from ml.deploy.smoke import smoke_test

    monkeypatch.delenv("CT_API_TOKEN", raising=False)
    monkeypatch.delenv("CT_API_TOKEN_FILE", raising=False)
    refused = smoke_test(server.url, [record], expected_version=f"sha256:{sha[:12]}")
    assert not refused.passed and "401" in refused.detail
    monkeypatch.setenv("CT_API_TOKEN_FILE", str(token_file))
    assert smoke_test(server.url, [record], expected_version=f"sha256:{sha[:12]}").passed

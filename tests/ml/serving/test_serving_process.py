"""The real server process on 127.0.0.1: endpoints, input validation, integrity refusal, the
prediction log across SIGTERM, feedback, and metrics across workers."""

from __future__ import annotations

import json
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from ml.data import MISSING_CATEGORY, model_frame
from ml.predlog import is_prediction_log, read_prediction_log
from tests.ml.serving.conftest import parse_metrics

NUMERIC = ["age", "tenure", "satisfaction_score", "performance_rating", "work_hours", "projects_count",
           "promotion_flag", "salary"]
CATEGORICAL = ["department"]
TARGET = "attrition"


@pytest.fixture(scope="module")
def client(module_server):
    with httpx.Client(base_url=module_server.url, timeout=10) as c:
        yield c


def test_health_ready_model(client, trained, module_server):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model_version": "7", "server_pid": module_server.proc.pid}
    model = client.get("/model").json()
    assert model == {"name": "attrition-test", "version": "7", "sha256": trained.sha256,
                     "features": {"numeric": NUMERIC, "categorical": CATEGORICAL},
                     "classes": ["0", "1"], "threshold": 0.5}


def test_predict_matches_sklearn(client, trained, make_records):
    records = make_records(20)
    expected = trained.pipeline.predict_proba(model_frame(_frame(records), trained.config))
    for record, want in zip(records, expected, strict=True):
        response = client.post("/predict", json=record)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"prediction_id", "model_version", "label", "probabilities"}
        assert len(body["prediction_id"]) == 32 and int(body["prediction_id"], 16) >= 0
        assert body["model_version"] == "7"
        assert body["probabilities"]["1"] == pytest.approx(want[1], abs=1e-5)
        assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert body["label"] == ("1" if body["probabilities"]["1"] >= 0.5 else "0")


def test_batch(client, make_records):
    records = make_records(30)
    body = client.post("/predict/batch", json={"records": records}).json()
    assert body["model_version"] == "7" and len(body["predictions"]) == 30
    singles = [client.post("/predict", json=r).json() for r in records[:3]]
    for single, batched in zip(singles, body["predictions"], strict=False):
        assert single["probabilities"] == pytest.approx(batched["probabilities"], abs=1e-6)
        assert single["label"] == batched["label"]
    assert len({p["prediction_id"] for p in body["predictions"]}) == 30


def test_categorical_null_unknown_and_numbers(client, trained, make_records, start_server):
    """null -> MISSING_CATEGORY behaves exactly like the sklearn pipeline; an unseen category (a number is
    canonicalised first) is refused by default and, with CT_UNSEEN_CATEGORY=mark, scored like the pipeline."""
    base = make_records(1)[0]
    marking = start_server({"CT_MODEL_URI": str(trained.path), "CT_UNSEEN_CATEGORY": "mark"}).client()
    for value, as_model_sees in ((None, MISSING_CATEGORY), ("Astronauts", "Astronauts"), (3, "3")):
        response = client.post("/predict", json=base | {"department": value})
        if value is not None:
            assert response.status_code == 422, response.text
            assert f"'department' = '{as_model_sees}' is a category the model never saw" in response.json()["detail"]
            response = marking.post("/predict", json=base | {"department": value})
            assert response.json()["unseen"] == ["department"]
        assert response.status_code == 200, response.text
        frame = _frame([base | {"department": as_model_sees}])
        want = trained.pipeline.predict_proba(model_frame(frame, trained.config))[0]
        assert response.json()["probabilities"]["1"] == pytest.approx(want[1], abs=1e-5)


def _frame(records):
    import pandas as pd

    return pd.DataFrame.from_records(records)


def _raw(client, path, content, content_type="application/json"):
    headers = {"content-type": content_type} if content_type else {}
    return client.post(path, content=content, headers=headers)


BAD_NUMERIC = [
    ("NaN literal", lambda r: json.dumps(r | {"age": math.nan}), 400),          # json.dumps writes NaN
    ("Infinity literal", lambda r: json.dumps(r | {"age": math.inf}), 400),
    ("huge exponent", lambda r: json.dumps(r)[:-1] + ', "x": 1e400}', 422),
    ("float32 overflow", lambda r: json.dumps(r | {"salary": 1e39}), 422),
    ('"NaN" string', lambda r: json.dumps(r | {"age": "NaN"}), 422),
    ("number as string", lambda r: json.dumps(r | {"age": "41"}), 422),
    ("bool", lambda r: json.dumps(r | {"promotion_flag": True}), 422),
    ("null numeric", lambda r: json.dumps(r | {"tenure": None}), 422),
    ("list numeric", lambda r: json.dumps(r | {"tenure": [1]}), 422),
    ("object categorical", lambda r: json.dumps(r | {"department": {"a": 1}}), 422),
    ("missing field", lambda r: json.dumps({k: v for k, v in r.items() if k != "salary"}), 422),
    ("extra field", lambda r: json.dumps(r | {"favourite_colour": "blue"}), 422),
    ("array body", lambda r: json.dumps([r]), 422),
    ("scalar body", lambda r: "42", 422),
    ("malformed", lambda r: '{"age": 41,', 400),
    ("not utf-8", lambda r: b"\xff\xfe{}", 400),
    ("empty body", lambda r: "", 400),
]


@pytest.mark.parametrize(("case", "make", "status"), BAD_NUMERIC, ids=[c[0] for c in BAD_NUMERIC])
def test_bad_single_inputs(client, record, case, make, status):
    response = _raw(client, "/predict", make(record))
    assert response.status_code == status, (case, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail


def test_error_messages_name_the_field(client, record):
    missing = _raw(client, "/predict", json.dumps({k: v for k, v in record.items() if k != "salary"}))
    assert "salary" in missing.json()["detail"]
    extra = _raw(client, "/predict", json.dumps(record | {"favourite_colour": "blue"}))
    assert "favourite_colour" in extra.json()["detail"]
    wrong = _raw(client, "/predict", json.dumps(record | {"age": "NaN"}))
    assert "'age'" in wrong.json()["detail"]
    null = _raw(client, "/predict", json.dumps(record | {"tenure": None}))
    assert "'tenure'" in null.json()["detail"] and "null" in null.json()["detail"]


def test_batch_errors(client, record):
    assert client.post("/predict/batch", json={"records": []}).status_code == 422
    over = client.post("/predict/batch", json={"records": [record] * 51})
    assert over.status_code == 413 and "CT_MAX_BATCH" in over.json()["detail"]
    assert client.post("/predict/batch", json=[record]).status_code == 422
    assert client.post("/predict/batch", json={"records": record}).status_code == 422
    assert client.post("/predict/batch", json={"records": [record], "x": 1}).status_code == 422
    bad = client.post("/predict/batch", json={"records": [record, record | {"age": "x"}, record | {"zz": 1}]})
    assert bad.status_code == 422
    assert "records[1]" in bad.json()["detail"] and "records[2]" in bad.json()["detail"]


def test_transport_level_errors(client, record):
    body = json.dumps(record)
    assert _raw(client, "/predict", body, "text/plain").status_code == 415
    assert _raw(client, "/predict", body, "application/x-www-form-urlencoded").status_code == 415
    assert _raw(client, "/predict", body, None).status_code == 200  # no Content-Type: parsed as JSON
    assert _raw(client, "/predict", body, "application/json; charset=utf-8").status_code == 200
    oversize = client.post("/predict", content=b'{"a": "' + b"x" * 70_000 + b'"}',
                           headers={"content-type": "application/json"})
    assert oversize.status_code == 413 and "CT_MAX_BODY_BYTES" in oversize.json()["detail"]

    def chunks():
        yield b'{"a": "'
        for _ in range(20):
            yield b"x" * 5000
        yield b'"}'

    chunked = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert client.get("/predict").status_code == 405
    assert client.get("/nope").status_code == 404
    assert client.get("/nope").json() == {"detail": "Not Found"}


def test_feedback_validation(client):
    pid = "0123456789abcdef0123456789abcdef"
    other = "fedcba9876543210fedcba9876543210"
    assert client.post("/feedback", json={"prediction_id": pid, "label": 1}).status_code == 202
    assert client.post("/feedback", json={"items": [{"prediction_id": other, "label": "0"}]}).json() == {
        "accepted": 1}
    again = client.post("/feedback", json={"items": [{"prediction_id": pid, "label": "0"}]})
    assert again.status_code == 409 and pid in again.json()["detail"]
    for bad in ({"prediction_id": pid}, {"prediction_id": "nope", "label": 1}, {"prediction_id": pid, "label": 5},
                {"prediction_id": pid, "label": 1, "x": 2}, {"items": []}, {"items": "x"},
                {"prediction_id": 12, "label": 1}, {"prediction_id": pid, "label": [1]}, [1, 2]):
        response = client.post("/feedback", json=bad)
        assert response.status_code == 422, (bad, response.text)


def test_never_500_under_fuzz(client, record):
    """Random mutations of a valid body: every answer is 200 or a 4xx with a JSON detail."""
    rng = np.random.default_rng(0)
    text = json.dumps(record).encode()
    values = [None, True, "", "x", 1e308, -1, [], {}, "\u0000", 10**40, -0.0]
    statuses = set()
    for _ in range(150):
        if rng.random() < 0.5:
            data = bytearray(text)
            for _ in range(rng.integers(1, 4)):
                data[rng.integers(len(data))] = rng.integers(0, 256)
            body = bytes(data)
        else:
            mutated = dict(record)
            key = list(record)[rng.integers(len(record))]
            mutated[key] = values[rng.integers(len(values))]
            body = json.dumps(mutated).encode()
        response = client.post("/predict", content=body, headers={"content-type": "application/json"})
        statuses.add(response.status_code)
        assert response.status_code == 200 or 400 <= response.status_code < 500, (body, response.text)
        assert "detail" in response.json() or response.status_code == 200
    assert statuses - {200}


def test_metrics(client, trained, make_records):
    client.post("/predict", json=make_records(1)[0])
    client.post("/predict", content=b"{", headers={"content-type": "application/json"})
    metrics = parse_metrics(client.get("/metrics").text)
    requests = metrics["ct_http_requests_total"]
    assert requests.total("ct_http_requests_total", endpoint="/predict", status="200") >= 1
    assert requests.total("ct_http_requests_total", endpoint="/predict", status="400") >= 1
    duration = metrics["ct_http_request_duration_seconds"]
    assert duration.total("ct_http_request_duration_seconds_bucket", endpoint="/predict", status="200",
                          le="+Inf") == requests.total("ct_http_requests_total", endpoint="/predict", status="200")
    assert metrics["ct_predictions_total"].total("ct_predictions_total") >= 1
    info = metrics["ct_model_info"].samples
    assert [dict(labels) for _, labels in info] == [{"name": "attrition-test", "version": "7",
                                                     "sha256": trained.sha256}] and set(info.values()) == {1}
    assert "ct_prediction_log_queue_depth" in metrics
    assert metrics["ct_prediction_log_dropped_total"].total("ct_prediction_log_dropped_total") == 0
    client.get("/no/such/path")
    metrics = parse_metrics(client.get("/metrics").text)
    assert metrics["ct_http_requests_total"].total("ct_http_requests_total", endpoint="other", status="404") >= 1


def test_tampered_model_refused(trained, start_server, tmp_path):
    data = bytearray(trained.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(bytes(data))
    server = start_server({"CT_MODEL_URI": str(tampered), "CT_MODEL_SHA256": trained.sha256}, ready=False)
    code = server.proc.wait(30)
    assert code != 0
    errors = [line for line in server.output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, server.output
    assert str(tampered) in errors[0] and trained.sha256 in errors[0] and "actual" in errors[0]
    assert "Traceback" not in server.output


def test_corrupt_model_without_pin_refused(start_server, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not onnx")
    server = start_server({"CT_MODEL_URI": str(junk)}, ready=False)
    assert server.proc.wait(30) != 0
    assert "not a loadable ONNX model" in server.output and "Traceback" not in server.output


def test_sigterm_loses_no_prediction_and_feedback_joins(trained, start_server, tmp_path, make_records):
    log_dir = tmp_path / "log"
    server = start_server({"CT_MODEL_URI": str(trained.path), "CT_MODEL_SHA256": trained.sha256,
                           "CT_PREDICTION_LOG_DIR": str(log_dir)}, args=["--model-version", "3"])
    records = make_records(300, seed=5)
    client = server.client()

    def send(record):  # httpx.Client is thread-safe: 8 threads share its connection pool
        return client.post("/predict", json=record).json()["prediction_id"]

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(send, records[:200]))
    batch = client.post("/predict/batch", json={"records": records[200:]}).json()
    ids += [p["prediction_id"] for p in batch["predictions"]]
    labels = {ids[0]: "1", ids[1]: "0", ids[2]: "1"}
    assert client.post("/feedback", json={"items": [{"prediction_id": k, "label": v}
                                                    for k, v in labels.items()]}).status_code == 202
    assert client.post("/feedback", json={"prediction_id": ids[0], "label": 0}).status_code == 409  # never stored
    assert server.stop(signal.SIGTERM) == 0
    assert "prediction log closed: 303 line(s) written, 0 dropped" in server.output

    lines = [json.loads(line) for f in sorted((log_dir / "predictions").rglob("*.jsonl"))
             for line in f.read_text().splitlines()]
    assert len(lines) == 300 and sorted(r["prediction_id"] for r in lines) == sorted(ids)
    assert set(lines[0]) == {"prediction_id", "timestamp", "model_version", "features", "output"}
    assert lines[0]["model_version"] == "3"

    assert is_prediction_log(log_dir)
    frame = read_prediction_log(log_dir, label_column=TARGET)
    assert len(frame) == 300
    assert {*NUMERIC, *CATEGORICAL, "prediction_id", "timestamp", "model_version", "prediction", TARGET} == set(
        frame.columns)
    joined = frame.set_index("prediction_id")[TARGET]
    assert joined.notna().sum() == 3
    assert {k: joined[k] for k in labels} == labels  # the 409 kept the first label of ids[0]
    sent = {r["age"] for r in records}
    assert set(frame["age"]) == sent


def test_two_workers_metrics_and_sigterm(trained, start_server, tmp_path, make_records):
    log_dir = tmp_path / "log"
    server = start_server({"CT_MODEL_URI": str(trained.path), "CT_MODEL_SHA256": trained.sha256,
                           "CT_PREDICTION_LOG_DIR": str(log_dir), "CT_WORKERS": "2"})
    records = make_records(50, seed=9)
    client = server.client()

    def send(record):
        return client.post("/predict", json=record).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(send, records * 4)) == {200}
    # Every worker's numbers are in prometheus_client's multiprocess files: whichever worker answers,
    # the scrape covers all 200 requests (the workers start one after the other: poll for the second).
    deadline = time.monotonic() + 10
    while True:
        text = client.get("/metrics").text
        metrics = parse_metrics(text)
        count = metrics["ct_http_requests_total"].total("ct_http_requests_total", endpoint="/predict", status="200")
        if (count == 200 and metrics["ct_workers"].total("ct_workers") == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert count == 200, text
    assert metrics["ct_workers"].total("ct_workers") == 2, text
    assert server.stop(signal.SIGTERM) == 0
    files = sorted((log_dir / "predictions").rglob("*.jsonl"))
    assert sum(len(f.read_text().splitlines()) for f in files) == 200


def test_feedback_without_log_is_503(trained, start_server):
    server = start_server({"CT_MODEL_URI": str(trained.path)})
    assert "prediction logging disabled" in server.output
    client = server.client()
    response = client.post("/feedback", json={"prediction_id": "0" * 32, "label": "1"})
    assert response.status_code == 503 and "CT_PREDICTION_LOG_DIR" in response.json()["detail"]
    assert client.get("/model").json()["version"] == "sha256:" + trained.sha256[:12]
    assert server.stop(signal.SIGINT) == 0


def test_sigkilled_supervisor_takes_its_workers_along(trained, start_server):
    """A SIGKILLed launcher cannot stop its workers; they end by themselves (parent-death signal), so nothing
    keeps serving a version nothing records."""
    import psutil

    server = start_server({"CT_MODEL_URI": str(trained.path), "CT_MODEL_SHA256": trained.sha256,
                           "CT_WORKERS": "2", "CT_TIMEOUT_KEEP_ALIVE_S": "2", "CT_LIMIT_CONCURRENCY": "50"})
    supervisor = psutil.Process(server.proc.pid)
    deadline = time.monotonic() + 20
    while len(workers := supervisor.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) >= 2
    server.proc.kill()
    server.proc.wait(10)
    started = time.monotonic()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"workers still running after their supervisor was killed: {[p.pid for p in alive]}"
    assert time.monotonic() - started < 15
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)


def test_connection_limits_come_from_settings(trained, start_server):
    """uvicorn's limits are set from serving settings: an idle keep-alive connection is closed after
    CT_TIMEOUT_KEEP_ALIVE_S."""
    import socket

    server = start_server({"CT_MODEL_URI": str(trained.path), "CT_TIMEOUT_KEEP_ALIVE_S": "1"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while b"\r\n\r\n" not in response:  # the head, then the body it announces (may come in pieces)
            response += sock.recv(4096)
        head, _, body = response.partition(b"\r\n\r\n")
        assert b"200" in head.split(b"\r\n")[0]
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += sock.recv(4096)
        started = time.monotonic()
        assert sock.recv(4096) == b""  # the server closed the idle connection
        assert time.monotonic() - started < 5

"""/metrics: the series (names, types, label names, HELP) are the documented ones with one worker and
with several, the numbers of several workers add up in one scrape, a killed worker's gauges leave the
sums while its counters stay, and every server start has a fresh multiprocess folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from ml.serving.app import create_app
from ml.serving.metrics import BUCKETS
from ml.serving.model import resolve_model
from ml.serving.settings import Settings
from tests.ml.serving.conftest import REPO, parse_metrics

#: exposed family -> (type, label names, HELP): the contract of docs/serving.md, "Metrics"
EXPECTED = {
    "ct_http_requests_total": ("counter", {"endpoint", "status"}, "HTTP requests by endpoint and status code."),
    "ct_http_request_duration_seconds": (
        "histogram", {"endpoint", "status"},
        "Time from request start to the end of the response body, by endpoint and status code."),
    "ct_predictions_total": ("counter", {"class"}, "Predictions served, by predicted class."),
    "ct_model_info": ("gauge", {"name", "version", "sha256"}, "The model being served (value is always 1)."),
    "ct_feedback_total": ("counter", set(), "Feedback labels accepted."),
    "ct_feedback_conflicts_total": ("counter", set(), "Feedback labels refused (409): the prediction already had one."),
    "ct_prediction_log_written_total": ("counter", set(), "Prediction-log lines written (predictions and feedback)."),
    "ct_prediction_log_dropped_total": ("counter", set(),
                                        "Prediction-log records dropped (queue full or write error)."),
    "ct_prediction_log_write_errors_total": ("counter", set(), "Failed prediction-log batch writes."),
    "ct_model_switches_total": ("counter", set(),
                                "Switches to the version the followed alias moved to (CT_MODEL_FOLLOW_S)."),
    "ct_model_switch_refused_total": ("counter", set(), "Versions the followed alias named that failed verification."),
    "ct_prediction_log_queue_depth": ("gauge", set(), "Prediction-log records queued, not yet written."),
    "ct_workers": ("gauge", set(), "Worker processes contributing to these metrics."),
}
LE = {str(b) for b in BUCKETS} | {"+Inf"}


def assert_contract(text: str) -> dict:
    """The scrape has exactly the EXPECTED families, each with samples, no pid label and no _created."""
    metrics = parse_metrics(text)
    assert {name: (f.type, f.label_names, f.help) for name, f in metrics.items()} == EXPECTED, text
    for name, family in metrics.items():
        assert family.samples, f"{name} has no sample"
        assert all(not sample.endswith("_created") for sample, _ in family.samples), name
    duration = metrics["ct_http_request_duration_seconds"].samples
    assert {dict(labels)["le"] for sample, labels in duration if sample.endswith("_bucket")} == LE
    requests = metrics["ct_http_requests_total"].samples
    counts = {labels: v for (sample, labels), v in duration.items() if sample.endswith("_count")}
    assert {labels: v for (_, labels), v in requests.items()} == counts  # one count, two views
    assert set(metrics["ct_model_info"].samples.values()) == {1}
    return metrics


def traffic(client: httpx.Client | TestClient, records: list[dict]) -> None:
    """Predictions, a batch, feedback, a client error and an unknown path."""
    pid = client.post("/predict", json=records[0]).json()["prediction_id"]
    assert client.post("/predict/batch", json={"records": records[1:]}).status_code == 200
    assert client.post("/feedback", json={"prediction_id": pid, "label": "1"}).status_code == 202
    assert client.post("/predict", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.get("/no/such/path").status_code == 404


def test_in_process_series_and_model_switch(trained, make_records, tmp_path):
    settings = Settings(model_uri=str(trained.path), expected_sha256=trained.sha256, model_version="5",
                        prediction_log_dir=tmp_path / "log")
    app = create_app(settings, resolve_model(settings))
    with TestClient(app) as client:
        traffic(client, make_records(4))
        metrics = assert_contract(client.get("/metrics").text)
        assert metrics["ct_predictions_total"].total("ct_predictions_total") == 4
        assert metrics["ct_feedback_total"].total("ct_feedback_total") == 1
        assert metrics["ct_workers"].total("ct_workers") == 1

        service = app.state.service
        service.metrics.set_model_info({"name": "attrition-test", "version": "6", "sha256": "ab" * 32})
        info = parse_metrics(client.get("/metrics").text)["ct_model_info"].samples
        assert info == {("ct_model_info", frozenset({"name": "attrition-test", "version": "6",
                                                     "sha256": "ab" * 32}.items())): 1}


def test_multiprocess_files_merge_and_dead_workers_leave_the_gauges(tmp_path):
    """prometheus_client's multiprocess mode without uvicorn: a second process records and dies without
    stopping (as if killed); the scrape still counts its requests but no longer its gauges."""
    folder = tmp_path / "prom"
    folder.mkdir()
    script = textwrap.dedent("""
        import os, sys
        from ml.serving.metrics import Metrics
        m = Metrics({"name": "m", "version": sys.argv[1], "sha256": "ab"})
        for _ in range(int(sys.argv[2])):
            m.observe("/predict", 200, 0.003)
        m.count_predictions(["1"] * int(sys.argv[2]))
        if sys.argv[1] == "1":
            m.sync()  # what its sync thread does every second
            os._exit(0)  # no stop(): its gauge files stay behind, like a killed worker's
        m.set_model_info({"name": "m", "version": "3", "sha256": "cd"})
        sys.stdout.write(m.render())
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-c", script]
    subprocess.run([*run, "1", "3"], env=env, check=True, timeout=60)
    assert any(p.name.startswith("gauge_livesum_") for p in folder.iterdir())
    text = subprocess.run([*run, "2", "4"], env=env, check=True, timeout=60, capture_output=True, text=True).stdout
    metrics = parse_metrics(text)
    assert metrics["ct_http_requests_total"].total("ct_http_requests_total", endpoint="/predict") == 7
    assert metrics["ct_http_request_duration_seconds"].total("ct_http_request_duration_seconds_bucket",
                                                             le="0.005") == 7
    assert metrics["ct_predictions_total"].total("ct_predictions_total", **{"class": "1"}) == 7
    assert metrics["ct_workers"].total("ct_workers") == 1
    assert [dict(labels)["version"] for _, labels in metrics["ct_model_info"].samples] == ["3"]
    assert all("pid" not in dict(labels) for f in metrics.values() for _, labels in f.samples)
    assert len([p for p in folder.iterdir() if p.name.startswith("gauge_livesum_")]) == 1  # the dead one's went


def test_metrics_refuse_a_missing_multiprocess_folder(tmp_path):
    code = "from ml.serving.metrics import Metrics; Metrics({'name': 'm', 'version': '1', 'sha256': 'ab'})"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "nope"), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "PROMETHEUS_MULTIPROC_DIR" in result.stderr


def test_one_worker_serves_the_contract(trained, start_server, tmp_path, make_records):
    server = start_server({"CT_MODEL_URI": str(trained.path), "CT_MODEL_SHA256": trained.sha256,
                           "CT_PREDICTION_LOG_DIR": str(tmp_path / "log")})
    client = server.client()
    traffic(client, make_records(5))
    metrics = assert_contract(client.get("/metrics").text)
    assert metrics["ct_http_requests_total"].total("ct_http_requests_total", endpoint="/predict") == 2
    assert metrics["ct_workers"].total("ct_workers") == 1
    assert server.stop(signal.SIGTERM) == 0


def _worker_pids(folder: Path, prefix: str = "gauge_livesum_") -> set[int]:
    return {int(p.name[len(prefix):-3]) for p in folder.glob(f"{prefix}*.db")}


def _per_worker_requests(folder: Path) -> dict[int, float]:
    """Requests each worker recorded, read from its own histogram file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    for path in folder.glob("histogram_*.db"):
        families = MultiProcessCollector.merge([str(path)])
        out[int(path.name[len("histogram_"):-3])] = sum(
            s.value for f in families for s in f.samples if s.name.endswith("_count"))
    return out


def _scrape_until(url: str, condition, timeout_s: float = 30) -> dict:
    """Scrape until `condition(metrics)`; each scrape on a new connection (a worker may have been killed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx.get(url + "/metrics", timeout=10).text
        metrics = parse_metrics(text)
        if condition(metrics):
            return metrics
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s:\n{text}")
        time.sleep(0.2)


def test_two_workers_add_up_and_a_killed_worker_leaves_the_gauges(trained, start_server, tmp_path, make_records):
    base = tmp_path / "metrics"
    env = {"CT_MODEL_URI": str(trained.path), "CT_MODEL_SHA256": trained.sha256, "CT_WORKERS": "2",
           "CT_PREDICTION_LOG_DIR": str(tmp_path / "log"), "CT_METRICS_DIR": str(base)}
    server = start_server(env)
    _scrape_until(server.url, lambda m: m["ct_workers"].total("ct_workers") == 2)
    (folder,) = base.iterdir()  # this start's PROMETHEUS_MULTIPROC_DIR
    assert folder.name.startswith("ct-serving-metrics-")

    # New connections until both workers have answered some: then the scrape must sum both.
    records = make_records(16, seed=3)
    sent = 0
    for _ in range(50):
        with httpx.Client(base_url=server.url, timeout=10) as fresh, ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda r, c=fresh: c.post("/predict", json=r).status_code, records))
        assert set(statuses) == {200}
        sent += len(records)
        per_worker = _per_worker_requests(folder)
        if len([n for n in per_worker.values() if n]) == 2:
            break
    assert len(per_worker) == 2 and all(per_worker.values()), per_worker

    def added_up(m: dict) -> bool:
        return m["ct_prediction_log_written_total"].total("ct_prediction_log_written_total") == sent

    metrics = _scrape_until(server.url, added_up)  # the writers' totals are copied every second
    assert_contract(httpx.get(server.url + "/metrics").text)
    assert metrics["ct_http_requests_total"].total("ct_http_requests_total", endpoint="/predict", status="200") == sent
    assert metrics["ct_predictions_total"].total("ct_predictions_total") == sent
    assert metrics["ct_workers"].total("ct_workers") == 2

    # SIGKILL one worker: uvicorn starts a new one; the dead one's counters stay, its gauges go.
    workers = _worker_pids(folder)
    assert len(workers) == 2
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)

    def replaced(m: dict) -> bool:
        pids = _worker_pids(folder)
        return victim not in pids and len(pids) == 2 and m["ct_workers"].total("ct_workers") == 2

    metrics = _scrape_until(server.url, replaced, timeout_s=60)
    assert metrics["ct_http_requests_total"].total("ct_http_requests_total", endpoint="/predict", status="200") == sent
    assert (folder / f"histogram_{victim}.db").is_file()
    assert server.stop(signal.SIGTERM) == 0
    assert not folder.exists() and base.is_dir()  # removed with the server; CT_METRICS_DIR stays

    # The next start counts from zero: a fresh folder, not the last one's files.
    again = start_server(env)
    fresh = parse_metrics(again.client().get("/metrics").text)
    requests = fresh.get("ct_http_requests_total")
    assert requests is None or requests.total("ct_http_requests_total", endpoint="/predict") == 0
    assert again.stop(signal.SIGTERM) == 0
    assert list(base.iterdir()) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_model_info_names_the_served_model(trained, start_server, workers):
    server = start_server({"CT_MODEL_URI": str(trained.path), "CT_MODEL_VERSION": "9", "CT_WORKERS": workers})
    metrics = _scrape_until(server.url, lambda m: m["ct_workers"].total("ct_workers") == int(workers))
    assert [dict(labels) for _, labels in metrics["ct_model_info"].samples] == [
        {"name": "attrition-test", "version": "9", "sha256": trained.sha256}]
    assert server.stop(signal.SIGTERM) == 0

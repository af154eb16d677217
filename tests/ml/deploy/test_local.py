"""The local deploy target with real server processes on 127.0.0.1: roll out, keep serving on a
re-deploy of the same version, and roll back when the new version fails its smoke test."""

from __future__ import annotations

import json
import urllib.request

import pandas as pd
import pytest

from ml.challenger import fit_challenger
from ml.config import load_config
from ml.deploy.local import deploy_local, is_serving, read_state, stop_server
from ml.deploy.smoke import SmokeResult, smoke_records, smoke_test
from ml.export import OnnxModel, to_onnx
from tests.conftest import DATA, DEMO_CONFIG, free_port


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    config = load_config(DEMO_CONFIG)
    reference = pd.read_csv(DATA / "reference.csv")
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for version, current in (("1", "current_no_drift.csv"), ("2", "current_covariate_drift.csv")):
        challenger = fit_challenger(config, reference, pd.read_csv(DATA / current))
        path = folder / f"v{version}.onnx"
        path.write_bytes(to_onnx(challenger.pipeline, config, challenger.data.classes))
        paths[version] = (path, OnnxModel.load(path).sha256)
    records = smoke_records(pd.read_csv(DATA / "current_no_drift.csv"), config, 5)
    return config, paths, records


def ready_version(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as response:
        return json.loads(response.read())["model_version"]


def test_deploy_then_rollback_on_failed_smoke(models, ct_home):
    config, paths, records = models
    port = free_port()

    def real(url, version, sha):
        return smoke_test(url, records, version, sha)

    def reject_v2(url, version, sha):
        return SmokeResult(False, "injected failure") if version == "2" else real(url, version, sha)

    first = deploy_local("m", "1", *paths["1"], host="127.0.0.1", port=port, timeout_s=60, smoke=real)
    assert first.status == "deployed" and ready_version(port) == "1"
    again = deploy_local("m", "1", *paths["1"], host="127.0.0.1", port=port, timeout_s=60, smoke=real)
    assert again.status == "unchanged" and read_state("m").pid == read_state("m").pid
    failed = deploy_local("m", "2", *paths["2"], host="127.0.0.1", port=port, timeout_s=60, smoke=reject_v2)
    assert failed.status == "rolled_back" and failed.rolled_back and "injected failure" in failed.detail
    assert ready_version(port) == "1" and read_state("m").version == "1"
    good = deploy_local("m", "2", *paths["2"], host="127.0.0.1", port=port, timeout_s=60, smoke=real)
    assert good.status == "deployed" and good.previous_version == "1" and ready_version(port) == "2"
    assert stop_server("m") and not is_serving(read_state("m"))


def test_a_server_that_cannot_start_is_reported_not_left_behind(models, ct_home, tmp_path):
    config, paths, records = models
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    result = deploy_local("m", "9", broken, "0" * 64, host="127.0.0.1", port=free_port(), timeout_s=30,
                          smoke=lambda url, version, sha: smoke_test(url, records, version, sha))
    assert result.status == "failed" and not result.rolled_back
    assert "exited with code" in result.detail
    assert read_state("m") is None


def test_stale_state_never_signals_a_process_that_reused_the_pid(ct_home):
    """state.json outlives its server (crash, reboot); its pid may now be someone else's process."""
    import signal
    import subprocess

    from ml.deploy.local import ServerState, _write_state, serving_dir

    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        serving_dir("stale-model").mkdir(parents=True)
        _write_state("stale-model", ServerState(version="1", pid=bystander.pid, host="127.0.0.1", port=free_port(),
                                               model_path="/nonexistent.onnx", sha256="0" * 64, started_at="x"))
        assert stop_server("stale-model", grace_s=0.5) is False
        assert bystander.poll() is None  # still running: it was left alone
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait(5)


def _deploy(models, version, port):
    config, paths, records = models
    return deploy_local("m", version, *paths[version], host="127.0.0.1", port=port, timeout_s=60,
                        smoke=lambda url, v, sha: smoke_test(url, records, v, sha))


def test_identity_is_recorded_and_an_unrecorded_server_is_recovered_loudly(models, ct_home, caplog):
    """state.json lost (a crash between start and record, a hand-deleted file) while v1 serves: status says
    so, and the next deploy starts from what really serves instead of failing on a taken port."""
    from ml.deploy.local import _write_state, find_servers, local_server_status
    from ml.procs import start_time

    port = free_port()
    assert _deploy(models, "1", port).status == "deployed"
    state = read_state("m")
    assert state.status == "serving" and state.pid_started == start_time(state.pid)
    _write_state("m", None)
    status = local_server_status("m")
    assert status["version"] is None and [s["version"] for s in status["unrecorded"]] == ["1"]
    assert "without a record" in status["problem"]
    second = _deploy(models, "2", port)
    assert second.status == "deployed" and second.previous_version == "1"
    assert "recovered" in caplog.text
    assert [s.version for s in find_servers("m")] == ["2"] and ready_version(port) == "2"


def test_a_server_left_starting_by_a_killed_deploy_is_not_trusted(models, ct_home):
    """A deploy killed after the new server started but before its smoke test passed leaves state.json saying
    `starting`: the next deploy stops that server (it never passed) rather than treating it as the previous."""
    from dataclasses import replace

    from ml.deploy.local import _write_state, find_servers, reconcile

    port = free_port()
    assert _deploy(models, "1", port).status == "deployed"
    _write_state("m", replace(read_state("m"), status="starting"))
    assert reconcile("m") is None
    assert find_servers("m") == [] and read_state("m") is None


def test_a_foreign_process_on_the_port_is_never_adopted(models, ct_home, tmp_path):
    """Something else answers on the configured port (another model's server, any program): the deploy fails
    naming its pid and the port, and leaves it alone."""
    import subprocess
    import sys
    import time

    port = free_port()
    squatter = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        result = _deploy(models, "1", port)
        assert result.status == "failed" and f"pid {squatter.pid}" in result.detail and str(port) in result.detail
        assert "not adopting it" in result.detail
        assert squatter.poll() is None and read_state("m") is None
    finally:
        squatter.kill()
        squatter.wait(5)


def test_a_multi_worker_server_is_replaced_not_taken_for_a_foreign_one(models, ct_home, monkeypatch):
    """The workers of the recorded server hold its socket too: the next deploy replaces it."""
    from ml.deploy.local import find_servers

    monkeypatch.setenv("CT_WORKERS", "2")
    port = free_port()
    assert _deploy(models, "1", port).status == "deployed"
    second = _deploy(models, "2", port)
    assert second.status == "deployed", second.detail
    assert [s.version for s in find_servers("m")] == ["2"] and ready_version(port) == "2"


def test_the_server_is_not_handed_the_workers_mlflow_login(models, ct_home, monkeypatch):
    from pathlib import Path

    config, paths, records = models
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-of-the-worker")
    port = free_port()
    done = deploy_local("m", "1", *paths["1"], host="127.0.0.1", port=port, timeout_s=60,
                        smoke=lambda url, version, sha: smoke_test(url, records, version, sha))
    assert done.status == "deployed"
    environ = Path(f"/proc/{read_state('m').pid}/environ").read_bytes().split(b"\0")
    assert not [e for e in environ if e.startswith((b"MLFLOW_TRACKING_USERNAME=", b"MLFLOW_TRACKING_PASSWORD="))]
    assert any(e.startswith(b"PYTHONPATH=") for e in environ)
    assert stop_server("m")


class Poller:
    """Threads that POST /predict to the port one request after another, each on a new connection (as `curl`
    in a loop does), and keep every answer's version and every failure."""

    def __init__(self, port: int, record: dict, threads: int = 2):
        import threading

        self.url, self.body = f"http://127.0.0.1:{port}/predict", json.dumps(record).encode()
        self.versions: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            request = urllib.request.Request(self.url, self.body, {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    self.versions.append(json.loads(response.read())["model_version"])
            except Exception as exc:  # noqa: BLE001 - every kind of failure is what this test counts
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def wait_for(self, version: str, answers: int = 20, timeout_s: float = 30) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while self.versions[-answers:].count(version) < answers and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Poller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_new_version_takes_over_the_port_without_a_failed_request(models, ct_home, monkeypatch, workers):
    """v2 replaces v1, then v1 replaces v2, while clients poll: every request is answered, by one version or
    the other, and after each deploy only the new version answers and runs."""
    from ml.deploy.local import find_servers

    monkeypatch.setenv("CT_WORKERS", workers)
    config, paths, records = models
    port = free_port()
    assert _deploy(models, "1", port).status == "deployed"
    with Poller(port, records[0]) as poller:
        poller.wait_for("1")
        second = _deploy(models, "2", port)
        poller.wait_for("2")
        answered_by_v2 = len(poller.versions)
        back = _deploy(models, "1", port)
        poller.wait_for("1")
    assert second.status == back.status == "deployed", (second.detail, back.detail)
    assert "without a gap" in second.detail and "without a gap" in back.detail
    assert poller.failures == []
    assert poller.versions[-1] == "1" and "2" in poller.versions[:answered_by_v2] and len(poller.versions) > 100
    assert [s.version for s in find_servers("m")] == ["1"] and read_state("m").version == "1"


def test_a_version_failing_its_smoke_test_beside_the_old_one_never_interrupts_it(models, ct_home):
    config, paths, records = models
    port = free_port()
    assert _deploy(models, "1", port).status == "deployed"
    serving = read_state("m")
    with Poller(port, records[0]) as poller:
        poller.wait_for("1")
        failed = deploy_local("m", "2", *paths["2"], host="127.0.0.1", port=port, timeout_s=60,
                              smoke=lambda url, v, sha: SmokeResult(False, f"injected failure at {url}"))
        poller.wait_for("1")
    assert failed.status == "rolled_back" and "kept serving throughout" in failed.detail
    assert f":{port}" not in failed.detail.split("injected failure at")[1].split(")")[0]  # smoke-tested elsewhere
    assert poller.failures == [] and set(poller.versions) == {"1"}
    now = read_state("m")
    assert (now.pid, now.pid_started, now.version) == (serving.pid, serving.pid_started, "1")
    assert read_state("m", "candidate") is None


def test_a_candidate_left_by_a_killed_deploy_is_stopped_not_trusted(models, ct_home):
    """A deploy killed while its new server ran beside the old one (before the smoke test passed) leaves
    candidate.json: the next reconcile keeps the recorded server and stops the candidate, even when the
    recorded one is gone too."""
    from ml.deploy.local import find_servers, reconcile, start_server

    config, paths, records = models
    port = free_port()
    assert _deploy(models, "1", port).status == "deployed"
    start_server("m", "2", *paths["2"], "127.0.0.1", port, timeout_s=60, smoke_port=free_port())
    assert sorted(s.version for s in find_servers("m")) == ["1", "2"] and read_state("m", "candidate").version == "2"
    assert reconcile("m").version == "1" and [s.version for s in find_servers("m")] == ["1"]
    assert read_state("m", "candidate") is None and ready_version(port) == "1"
    start_server("m", "2", *paths["2"], "127.0.0.1", port, timeout_s=60, smoke_port=free_port())
    stop_server("m")  # the recorded server is gone as well
    assert reconcile("m") is None and find_servers("m") == []

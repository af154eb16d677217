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

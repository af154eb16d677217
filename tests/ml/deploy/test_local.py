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

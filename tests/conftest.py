"""Shared fixtures: a temp CT_HOME (MLflow store, runs, local serving) per test, a temp AIRFLOW_HOME
with a migrated SQLite DB per session, the demo config, and a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "attrition"
DEMO_CONFIG = REPO / "configs" / "employee-attrition.yaml"

# Airflow reads its configuration once, at import: point it at a private home before anything imports it.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="ct-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(_AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]),
})
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _no_airflow_task_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dag.test()` runs tasks in this process and leaves AIRFLOW_CTX_* behind; code outside a task
    (the CLI path, `by` of alias moves) must not see a DAG run that is over."""
    for key in [k for k in os.environ if k.startswith("AIRFLOW_CTX_")]:
        monkeypatch.delenv(key)


def fresh_python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`script` (with `args` as sys.argv[1:]) in a new interpreter started in the repository: what a fresh
    process imports and does, apart from this test process's state."""
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ct_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private CT_HOME (so a private MLflow store) for one test; stops servers it started."""
    home = tmp_path / "ct"
    monkeypatch.setenv("CT_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield home
    _stop_servers(home)


def _stop_servers(home: Path) -> None:
    """Every local server of every model under `home`, recorded in state.json or not."""
    from ml.deploy.local import find_servers, stop_server

    for folder in home.glob("serving/*"):
        for server in find_servers(folder.name):
            stop_server(folder.name, server)


@pytest.fixture(scope="module")
def module_ct_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT_HOME shared by the tests of one module (scenario tests that build on each other)."""
    home = tmp_path_factory.mktemp("ct")
    old = os.environ.get("CT_HOME")
    os.environ["CT_HOME"] = str(home)
    yield home
    _stop_servers(home)
    if old is None:
        os.environ.pop("CT_HOME", None)
    else:
        os.environ["CT_HOME"] = old


def write_config(folder: Path, **changes: object) -> Path:
    """A copy of the demo config with absolute data paths, a free port and top-level sections
    replaced or merged (dict values merge into the section)."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["data"] = {"reference": str(DATA / "reference.csv"), "current": str(DATA / "current_no_drift.csv")}
    raw["deploy"] = {**raw["deploy"], "port": free_port()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the session's SQLite Airflow DB once (about 5 s)."""
    result = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                            env=os.environ.copy(), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return _AIRFLOW_HOME

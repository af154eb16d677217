"""The `local` deploy target: the serving entrypoint as a detached process on 127.0.0.1.

Roll-out follows the same steps as the Kubernetes deployer: stop the serving version, start the new
one on the configured port, wait until /ready, smoke-test it; on any failure stop it and restart the
previous version (rolled_back=True). The state (pid, port, version) lives in
$CT_HOME/serving/<model>/state.json; server output goes to server.log beside it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ml.deploy import DeployResult, SmokeCheck
from ml.deploy.smoke import SmokeResult
from ml.procs import alive
from ml.tracking import ct_home

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ServerState:
    version: str
    pid: int
    host: str
    port: int
    model_path: str
    sha256: str
    started_at: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def serving_dir(model_name: str) -> Path:
    return ct_home() / "serving" / model_name


def read_state(model_name: str) -> ServerState | None:
    path = serving_dir(model_name) / "state.json"
    if not path.exists():
        return None
    return ServerState(**json.loads(path.read_text()))


def _write_state(model_name: str, state: ServerState | None) -> None:
    path = serving_dir(model_name) / "state.json"
    if state is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def is_serving(state: ServerState | None) -> bool:
    if state is None or not alive(state.pid):
        return False
    try:
        with urllib.request.urlopen(f"{state.url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _is_model_server(pid: int) -> bool:
    """Whether `pid` still runs the model server: state.json outlives it (a crash, a reboot) and the pid
    may since belong to something else. Where /proc is unavailable, trust the recorded pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:  # no such process, or no /proc on this system
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return b"ml.serving" in cmdline


def stop_server(model_name: str, state: ServerState | None = None, grace_s: float = 15.0) -> bool:
    """Stop the recorded server (SIGTERM, then SIGKILL after grace_s). True if one was running."""
    state = state or read_state(model_name)
    if state is None or not alive(state.pid):
        return False
    if not _is_model_server(state.pid):
        log.warning("pid %s recorded for %s v%s is no longer the model server (stale state, pid reused): "
                    "leaving that process alone", state.pid, model_name, state.version)
        return False
    try:
        os.killpg(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("pid %s recorded for %s belongs to another user: not stopping it", state.pid, model_name)
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(state.pid):
        time.sleep(0.05)
    if alive(state.pid):
        log.warning("server pid %s ignored SIGTERM for %.0fs: killing it", state.pid, grace_s)
        os.killpg(state.pid, signal.SIGKILL)
    log.info("stopped %s v%s (pid %s)", model_name, state.version, state.pid)
    return True


def start_server(model_name: str, version: str, model_path: Path, sha256: str, host: str, port: int,
                 timeout_s: float, extra_args: Sequence[str] = ()) -> ServerState:
    """Start `python -m ml.serving` detached and wait for /ready; raises RuntimeError on failure.
    `extra_args`: more server flags (a shadow or canary model, ml.deploy.canary)."""
    folder = serving_dir(model_name)
    folder.mkdir(parents=True, exist_ok=True)
    repo_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "ml.serving", "--model-uri", str(model_path), "--expected-sha256", sha256,
           "--model-version", str(version), "--host", host, "--port", str(port),
           "--prediction-log-dir", str(folder / "predictions"), *extra_args]
    log_file = (folder / "server.log").open("ab")
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, start_new_session=True, close_fds=True)
    log_file.close()
    state = ServerState(version=str(version), pid=process.pid, host=host, port=port, model_path=str(model_path),
                        sha256=sha256, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} during start-up; last output:\n"
                               + _tail(folder / "server.log"))
        try:
            with urllib.request.urlopen(f"{state.url}/ready", timeout=1) as response:
                if response.status == 200:
                    return state
        except OSError:
            pass
        time.sleep(0.1)
    stop_server(model_name, state)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s (deploy.startup_timeout_s); last output:\n"
                       + _tail(folder / "server.log"))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _start_and_check(model_name: str, version: str, model_path: Path, sha256: str, host: str, port: int,
                     timeout_s: float, smoke: SmokeCheck,
                     extra_args: Sequence[str] = ()) -> tuple[ServerState | None, SmokeResult]:
    try:
        state = start_server(model_name, version, model_path, sha256, host, port, timeout_s, extra_args)
    except RuntimeError as exc:
        return None, SmokeResult(False, str(exc))
    result = smoke(state.url, version, sha256)
    if not result.passed:
        stop_server(model_name, state)
        return None, result
    return state, result


def deploy_local(model_name: str, version: str, model_path: Path, sha256: str, *, host: str, port: int,
                 timeout_s: float, smoke: SmokeCheck, extra_args: Sequence[str] = (),
                 restart: bool = False) -> DeployResult:
    """Serve `version` on host:port; roll back to the previous server if it fails the smoke test.
    `extra_args` (a shadow or canary beside it) or `restart` always restart the server (the previous one
    is restored without its extra arguments)."""
    previous = read_state(model_name)
    running = is_serving(previous)
    if running and previous is not None and previous.version == str(version) and previous.sha256 == sha256 \
            and not extra_args and not restart:
        result = smoke(previous.url, version, sha256)
        if result.passed:
            return DeployResult("local", str(version), previous.version, "unchanged", False, previous.url,
                                f"v{version} already serving at {previous.url}", result.to_dict())
    if previous is not None:
        stop_server(model_name, previous)
    log.info("deploying %s v%s on %s:%s", model_name, version, host, port)
    state, result = _start_and_check(model_name, str(version), model_path, sha256, host, port, timeout_s, smoke,
                                     extra_args)
    if state is not None:
        _write_state(model_name, state)
        return DeployResult("local", str(version), previous.version if previous else None, "deployed", False,
                            state.url, f"v{version} serving at {state.url}: {result.detail}", result.to_dict())
    log.error("v%s failed its smoke test: %s", version, result.detail)
    if previous is None or not running or not Path(previous.model_path).exists():
        _write_state(model_name, None)
        return DeployResult("local", str(version), previous.version if previous else None, "failed", False, None,
                            f"v{version} failed ({result.detail}); no previous version was serving",
                            result.to_dict())
    restored, back = _start_and_check(model_name, previous.version, Path(previous.model_path), previous.sha256,
                                      previous.host, previous.port, timeout_s, smoke)
    _write_state(model_name, restored)
    if restored is None:
        return DeployResult("local", str(version), previous.version, "failed", False, None,
                            f"v{version} failed ({result.detail}) and restarting v{previous.version} failed too "
                            f"({back.detail})", result.to_dict())
    return DeployResult("local", str(version), previous.version, "rolled_back", True, restored.url,
                        f"v{version} failed ({result.detail}); rolled back to v{previous.version}",
                        result.to_dict())

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
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ml.deploy import DeployResult, SmokeCheck
from ml.deploy.smoke import SmokeResult
from ml.procs import alive, start_time
from ml.tracking import ct_home

if TYPE_CHECKING:
    from ml.config import ModelConfig

log = logging.getLogger(__name__)

#: what a local model server is not handed from the environment of the process that starts it
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                      "MLFLOW_TRACKING_CLIENT_CERT_PATH", "DATABRICKS_TOKEN")

@dataclass(frozen=True)
class ServerState:
    """A local model server: what it serves and which process it is (pid + kernel start time)."""

    version: str
    pid: int
    host: str
    port: int
    model_path: str
    sha256: str
    started_at: str
    #: the process's start time (ml.procs.start_time): a pid reused by another process has another one
    pid_started: float | None = None
    #: "starting" from the moment the process exists until it passed /ready and its smoke test
    status: Literal["starting", "serving"] = "serving"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def serving_dir(model_name: str) -> Path:
    return ct_home() / "serving" / model_name


def served_log(config: ModelConfig, explicit: str | None = None) -> Path:
    """The prediction log of the model's served traffic: `explicit`, else data.current when it is a prediction
    log, else the one the local deploy target writes ($CT_HOME/serving/<name>/predictions)."""
    if explicit:
        return Path(config.resolve(explicit) or explicit)
    from ml.predlog import is_prediction_log

    current = config.current_path
    if current and is_prediction_log(current):
        return Path(current.removeprefix("file://"))
    return serving_dir(config.name) / "predictions"


def read_state(model_name: str) -> ServerState | None:
    path = serving_dir(model_name) / "state.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s is not JSON (a crash while it was written?): ignoring it", path)
        return None
    known = {f.name for f in fields(ServerState)}
    return ServerState(**{k: v for k, v in raw.items() if k in known})


def _write_state(model_name: str, state: ServerState | None) -> None:
    path = serving_dir(model_name) / "state.json"
    if state is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def _flag(cmdline: list[str], name: str) -> str | None:
    return cmdline[cmdline.index(name) + 1] if name in cmdline[:-1] else None


def server_of(model_name: str | None, pid: int) -> ServerState | None:
    """The local server of `model_name` that process `pid` is (read from its command line, which names this
    model's serving folder; any model's with None), None when `pid` is anything else: gone, another program,
    another model."""
    import psutil

    try:
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        created = process.create_time()
    except (psutil.Error, OSError):
        return None
    log_dir = str(serving_dir(model_name or "-") / "predictions")
    if "ml.serving" not in cmdline or (model_name is not None and _flag(cmdline, "--prediction-log-dir") != log_dir):
        return None
    port = _flag(cmdline, "--port") or ""
    return ServerState(version=_flag(cmdline, "--model-version") or "?", pid=pid,
                       host=_flag(cmdline, "--host") or "127.0.0.1", port=int(port) if port.isdigit() else 0,
                       model_path=_flag(cmdline, "--model-uri") or "", sha256=_flag(cmdline, "--expected-sha256") or "",
                       started_at=datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds"),
                       pid_started=round(created, 2))


def find_servers(model_name: str) -> list[ServerState]:
    """Every process on this machine that is a local server of `model_name`, recorded or not."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if "ml.serving" in cmdline and (state := server_of(model_name, process.info["pid"])) is not None:
            found.append(state)
    return found


def _same_process(recorded: ServerState, actual: ServerState | None) -> bool:
    return (actual is not None and (recorded.pid_started is None or actual.pid_started == recorded.pid_started)
            and (actual.version, actual.sha256, actual.port) == (recorded.version, recorded.sha256, recorded.port))


def _healthy(state: ServerState) -> bool:
    try:
        with urllib.request.urlopen(f"{state.url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def is_serving(state: ServerState | None) -> bool:
    """The recorded server still runs (same pid, same start time, same model and port) and answers /health."""
    if state is None or not alive(state.pid):
        return False
    return _same_process(state, server_of(None, state.pid)) and _healthy(state)


def port_holder(host: str, port: int) -> tuple[int | None, str] | None:
    """(pid or None when unknown, what it runs) of whatever accepts connections on host:port, None if nothing."""
    import psutil

    try:
        with socket.create_connection((host, port), timeout=1):
            pass
    except OSError:
        return None
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid, " ".join(psutil.Process(conn.pid).cmdline())[:200]
    except (psutil.Error, OSError):
        pass
    return None, "a process this user cannot inspect"


def stop_server(model_name: str, state: ServerState | None = None, grace_s: float = 15.0) -> bool:
    """Stop the recorded server (SIGTERM to its process group, then SIGKILL after grace_s). True if one was
    running. A pid that is no longer that server (stale state, pid reused) is left alone."""
    state = state or read_state(model_name)
    if state is None or not alive(state.pid):
        return False
    actual = server_of(model_name, state.pid)
    if actual is None or (state.pid_started is not None and actual.pid_started != state.pid_started):
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


def local_server_status(model_name: str) -> dict[str, Any] | None:
    """What `python -m ml status` shows: the recorded server (and whether it really is that process and
    answers), and every server of the model found running that state.json does not record. Reads only."""
    recorded = read_state(model_name)
    found = find_servers(model_name)
    if recorded is None and not found:
        return None
    serving = is_serving(recorded)
    unrecorded = [{"version": s.version, "url": s.url, "pid": s.pid, "healthy": _healthy(s)}
                  for s in found if recorded is None or s.pid != recorded.pid]
    status: dict[str, Any] = {"version": recorded.version if recorded else None,
                              "url": recorded.url if recorded else None, "pid": recorded.pid if recorded else None,
                              "state": recorded.status if recorded else None, "serving": serving,
                              "unrecorded": unrecorded}
    if recorded is not None and not serving:
        status["problem"] = (f"state.json names v{recorded.version} pid {recorded.pid}, which is "
                             + ("not that server any more" if alive(recorded.pid) else "gone"))
    if unrecorded:
        status["problem"] = (status.get("problem", "") + "; " if "problem" in status else "") + (
            f"{len(unrecorded)} server(s) of {model_name} run without a record: the next run or deploy "
            "reconciles them")
    return status


def reconcile(model_name: str) -> ServerState | None:
    """What really serves `model_name`, made the recorded state (call with the model's lock held): the recorded
    server if it is still that process, healthy and was trusted (passed its smoke test); else a server of
    this model found running without a record (recovered, loudly). Every other server of the model (an
    orphan of a killed deploy, a server that never passed its smoke test) is stopped."""
    recorded = read_state(model_name)
    found = find_servers(model_name)
    truth = next((s for s in found if recorded is not None and s.pid == recorded.pid
                  and _same_process(recorded, s) and recorded.status == "serving" and _healthy(s)), None)
    if truth is None:
        trusted = [s for s in found if _healthy(s) and not (recorded and s.pid == recorded.pid)]
        truth = trusted[0] if len(trusted) == 1 else None
        if truth is not None:
            log.warning("%s v%s serves at %s (pid %s) without being recorded in state.json (a crash between "
                        "start and record): recovered it", model_name, truth.version, truth.url, truth.pid)
        elif recorded is not None:
            log.warning("state.json of %s names v%s pid %s, which is not serving (%s): forgetting it", model_name,
                        recorded.version, recorded.pid, recorded.status if alive(recorded.pid) else "process gone")
    for stray in (s for s in found if truth is None or s.pid != truth.pid):
        log.warning("stopping %s v%s (pid %s, port %s): a server nothing records", model_name, stray.version,
                    stray.pid, stray.port)
        stop_server(model_name, stray)
    _write_state(model_name, truth)
    return truth


def start_server(model_name: str, version: str, model_path: Path, sha256: str, host: str, port: int,
                 timeout_s: float, extra_args: Sequence[str] = ()) -> ServerState:
    """Start `python -m ml.serving` detached and wait for /ready; raises RuntimeError on failure.
    `extra_args`: more server flags (a shadow or canary model, ml.deploy.canary)."""
    folder = serving_dir(model_name)
    folder.mkdir(parents=True, exist_ok=True)
    repo_root = str(Path(__file__).resolve().parents[2])
    # the server gets the sha256-verified file, never the worker's MLflow login (least privilege)
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_CREDENTIALS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "ml.serving", "--model-uri", str(model_path), "--expected-sha256", sha256,
           "--model-version", str(version), "--host", host, "--port", str(port),
           "--prediction-log-dir", str(folder / "predictions"), *extra_args]
    log_file = (folder / "server.log").open("ab")
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, start_new_session=True, close_fds=True)
    log_file.close()
    # Recorded before anything trusts it: a deploy killed from here on leaves a state.json naming this process
    # as "starting", which the next deploy stops (reconcile) instead of losing track of it.
    state = ServerState(version=str(version), pid=process.pid, host=host, port=port, model_path=str(model_path),
                        sha256=sha256, started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                        pid_started=start_time(process.pid), status="starting")
    _write_state(model_name, state)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} during start-up; last output:\n"
                               + _tail(folder / "server.log"))
        if _ready_version(state.url) == str(version):
            return state
        time.sleep(0.1)
    stop_server(model_name, state)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s (deploy.startup_timeout_s); last output:\n"
                       + _tail(folder / "server.log"))


def _ready_version(url: str) -> str | None:
    """The model version /ready reports once the server is ready, else None."""
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=1) as response:
            return str(json.loads(response.read()).get("model_version")) if response.status == 200 else None
    except (OSError, ValueError):
        return None


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


def _foreign_holder(model_name: str, host: str, port: int, previous: ServerState | None) -> str | None:
    """Why host:port cannot be used: something that is not this model's recorded server listens on it."""
    holder = port_holder(host, port)
    if holder is None or (previous is not None and _in_tree(holder[0], previous.pid)):
        return None
    pid, what = holder
    return (f"port {host}:{port} is taken by pid {pid if pid else '?'} ({what}), which is not the server "
            f"state.json records for {model_name}: not adopting it; stop that process or set deploy.port")


def _in_tree(pid: int | None, root: int) -> bool:
    """`pid` is `root` or one of its descendants (a worker of a multi-worker server holds the socket too)."""
    import psutil

    if pid is None:
        return False
    try:
        return pid == root or root in {parent.pid for parent in psutil.Process(pid).parents()}
    except psutil.Error:
        return False


def deploy_local(model_name: str, version: str, model_path: Path, sha256: str, *, host: str, port: int,
                 timeout_s: float, smoke: SmokeCheck, extra_args: Sequence[str] = (),
                 restart: bool = False) -> DeployResult:
    """Serve `version` on host:port; roll back to the previous server if it fails the smoke test. Holds the
    model's lock (ml.locks) and starts from what really serves (`reconcile`). `extra_args` (a shadow or canary
    beside it) or `restart` always restart the server (the previous one is restored without its extra
    arguments)."""
    from ml.locks import model_lock

    with model_lock(model_name, run_key=f"deploy v{version}", what=f"the local deploy of v{version}"):
        previous = reconcile(model_name)
        if previous is not None and previous.version == str(version) and previous.sha256 == sha256 \
                and not extra_args and not restart:
            result = smoke(previous.url, version, sha256)
            if result.passed:
                return DeployResult("local", str(version), previous.version, "unchanged", False, previous.url,
                                    f"v{version} already serving at {previous.url}", result.to_dict())
        foreign = _foreign_holder(model_name, host, port, previous)
        if foreign is not None:
            return DeployResult("local", str(version), previous.version if previous else None, "failed", False,
                                previous.url if previous else None, foreign, None)
        return _replace(model_name, previous, str(version), model_path, sha256, host=host, port=port,
                        timeout_s=timeout_s, smoke=smoke, extra_args=extra_args)


def _replace(model_name: str, previous: ServerState | None, version: str, model_path: Path, sha256: str, *,
             host: str, port: int, timeout_s: float, smoke: SmokeCheck,
             extra_args: Sequence[str] = ()) -> DeployResult:
    """Stop `previous`, start `version`, smoke-test it; restart `previous` when the new one fails."""
    if previous is not None:
        stop_server(model_name, previous)
    log.info("deploying %s v%s on %s:%s", model_name, version, host, port)
    state, result = _start_and_check(model_name, version, model_path, sha256, host, port, timeout_s, smoke,
                                     extra_args)
    if state is not None:
        _write_state(model_name, replace(state, status="serving"))
        return DeployResult("local", version, previous.version if previous else None, "deployed", False,
                            state.url, f"v{version} serving at {state.url}: {result.detail}", result.to_dict())
    log.error("v%s failed its smoke test: %s", version, result.detail)
    if previous is None or not Path(previous.model_path).exists():
        _write_state(model_name, None)
        return DeployResult("local", version, previous.version if previous else None, "failed", False, None,
                            f"v{version} failed ({result.detail}); no previous version was serving",
                            result.to_dict())
    restored, back = _start_and_check(model_name, previous.version, Path(previous.model_path), previous.sha256,
                                      previous.host, previous.port, timeout_s, smoke)
    _write_state(model_name, replace(restored, status="serving") if restored else None)
    if restored is None:
        return DeployResult("local", version, previous.version, "failed", False, None,
                            f"v{version} failed ({result.detail}) and restarting v{previous.version} failed too "
                            f"({back.detail})", result.to_dict())
    return DeployResult("local", version, previous.version, "rolled_back", True, restored.url,
                        f"v{version} failed ({result.detail}); rolled back to v{previous.version}",
                        result.to_dict())

"""The `local` deploy target: the serving entrypoint as a detached process on 127.0.0.1.

A new version starts beside the serving one, on the same port (Linux: SO_REUSEPORT, ml.serving.handoff),
while the port's traffic stays pinned on the serving one; it is smoke-tested on a private loopback port,
then takes every new connection, and the old server stops once it has none waiting: no request fails on
the way. A version that fails to start or fails its smoke test is stopped, and the serving one never
stopped answering (rolled_back=True). Where the port cannot be shared (not Linux, or a server started by
an earlier release without `--reuse-port`) the old server stops first and restarts when the new one
fails. The state (pid, port, version) lives in $CT_HOME/serving/<model>/state.json, the server being
started in candidate.json beside it; server output goes to server.log.
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
from ml.serving import handoff
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
    #: started with `--reuse-port 1`: the next version can start beside it (ml.serving.handoff)
    handoff: bool = False

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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


def read_state(model_name: str, record: Literal["state", "candidate"] = "state") -> ServerState | None:
    """The recorded server of `model_name` (state.json), or with record="candidate" the one being started
    beside it (candidate.json)."""
    path = serving_dir(model_name) / f"{record}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s is not JSON (a crash while it was written?): ignoring it", path)
        return None
    known = {f.name for f in fields(ServerState)}
    return ServerState(**{k: v for k, v in raw.items() if k in known})


def _write_state(model_name: str, state: ServerState | None,
                 record: Literal["state", "candidate"] = "state") -> None:
    path = serving_dir(model_name) / f"{record}.json"
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
                       pid_started=round(created, 2), handoff=_flag(cmdline, "--reuse-port") == "1")


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
    orphan of a killed deploy, a server that never passed its smoke test) is stopped, and the port's
    traffic is pinned on the one that serves (a deploy killed mid-swap may have left it steered)."""
    recorded = read_state(model_name)
    candidate = read_state(model_name, "candidate")
    found = find_servers(model_name)
    truth = next((s for s in found if recorded is not None and s.pid == recorded.pid
                  and _same_process(recorded, s) and recorded.status == "serving" and _healthy(s)), None)
    if truth is None:
        untrusted = {state.pid for state in (recorded, candidate) if state is not None}
        trusted = [s for s in found if _healthy(s) and s.pid not in untrusted]
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
    _write_state(model_name, None, "candidate")
    if truth is not None:
        _signal(truth, handoff.PIN_SIGNAL)
    return truth


def _signal(state: ServerState, signum: int) -> None:
    """TAKE_SIGNAL / PIN_SIGNAL to a server started with `--reuse-port 1` (to any other the signal would be
    fatal, so it is not sent)."""
    if state.handoff:
        try:
            os.kill(state.pid, signum)
        except ProcessLookupError:
            pass


def start_server(model_name: str, version: str, model_path: Path, sha256: str, host: str, port: int,
                 timeout_s: float, extra_args: Sequence[str] = (), smoke_port: int | None = None) -> ServerState:
    """Start `python -m ml.serving` detached and wait for /ready; raises RuntimeError on failure.
    `extra_args`: more server flags (a shadow or canary model, ml.deploy.canary). `smoke_port`: the private
    loopback port it answers on too (its smoke test while the port's traffic is pinned on another server);
    /ready is awaited there. The process is recorded in candidate.json until the caller trusts it."""
    folder = serving_dir(model_name)
    folder.mkdir(parents=True, exist_ok=True)
    repo_root = str(Path(__file__).resolve().parents[2])
    # the server gets the sha256-verified file, never the worker's MLflow login (least privilege)
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_CREDENTIALS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "ml.serving", "--model-uri", str(model_path), "--expected-sha256", sha256,
           "--model-version", str(version), "--host", host, "--port", str(port),
           "--prediction-log-dir", str(folder / "predictions"), *extra_args]
    cmd += ["--reuse-port", "1"] if handoff.supported() else []
    cmd += ["--smoke-port", str(smoke_port)] if smoke_port else []
    log_file = (folder / "server.log").open("ab")
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=env, start_new_session=True, close_fds=True)
    log_file.close()
    # Recorded before anything trusts it: a deploy killed from here on leaves a candidate.json naming this
    # process, which the next deploy stops (reconcile) instead of losing track of it or trusting it.
    state = ServerState(version=str(version), pid=process.pid, host=host, port=port, model_path=str(model_path),
                        sha256=sha256, started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                        pid_started=start_time(process.pid), status="starting", handoff=handoff.supported())
    _write_state(model_name, state, "candidate")
    ready_url = _check_url(state, smoke_port)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} during start-up; last output:\n"
                               + _tail(folder / "server.log"))
        if _ready(ready_url) == (str(version), process.pid):
            return state
        time.sleep(0.1)
    stop_server(model_name, state)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s (deploy.startup_timeout_s); last output:\n"
                       + _tail(folder / "server.log"))


def _check_url(state: ServerState, smoke_port: int | None) -> str:
    """Where a server being started is checked (/ready, its smoke test): its private smoke port if it has one."""
    return _url(handoff.smoke_host(state.host), smoke_port) if smoke_port else state.url


def _trust(model_name: str, state: ServerState) -> None:
    """`state` passed its smoke test: it is the recorded server now, no longer the candidate."""
    _write_state(model_name, replace(state, status="serving"))
    _write_state(model_name, None, "candidate")


def _discard(model_name: str, state: ServerState | None) -> None:
    """The candidate failed: stop it (None: its process is gone already) and forget it."""
    if state is not None:
        stop_server(model_name, state)
    _write_state(model_name, None, "candidate")


def _ready(url: str) -> tuple[str, int] | None:
    """(model version, server pid) /ready reports once the server is ready, else None."""
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=1) as response:
            body = json.loads(response.read())
            return (str(body.get("model_version")), body.get("server_pid")) if response.status == 200 else None
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _start_and_check(model_name: str, version: str, model_path: Path, sha256: str, host: str, port: int,
                     timeout_s: float, smoke: SmokeCheck, extra_args: Sequence[str] = (),
                     smoke_port: int | None = None) -> tuple[ServerState | None, SmokeResult]:
    try:
        state = start_server(model_name, version, model_path, sha256, host, port, timeout_s, extra_args, smoke_port)
    except RuntimeError as exc:  # start_server stopped it, or it exited
        _discard(model_name, None)
        return None, SmokeResult(False, str(exc))
    result = smoke(_check_url(state, smoke_port), version, sha256)
    if not result.passed:
        _discard(model_name, state)
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
    """Serve `version` instead of `previous`: beside it when the port can be shared, else stop and start."""
    if previous is not None and previous.handoff and handoff.supported() and (previous.host, previous.port) == (
            host, port):
        return _swap_beside(model_name, previous, version, model_path, sha256, timeout_s=timeout_s, smoke=smoke,
                            extra_args=extra_args)
    if previous is not None:
        log.warning("stopping %s v%s before v%s starts (%s): nothing answers on %s:%s until it is ready",
                    model_name, previous.version, version,
                    "it moves to another port" if (previous.host, previous.port) != (host, port)
                    else "it was started without --reuse-port, by an earlier release" if handoff.supported()
                    else f"a port cannot be shared on {sys.platform}", host, port)
        stop_server(model_name, previous)
    return _stop_and_start(model_name, previous, version, model_path, sha256, host=host, port=port,
                           timeout_s=timeout_s, smoke=smoke, extra_args=extra_args)


def _swap_beside(model_name: str, previous: ServerState, version: str, model_path: Path, sha256: str, *,
                 timeout_s: float, smoke: SmokeCheck, extra_args: Sequence[str]) -> DeployResult:
    """Start `version` beside `previous` on its port, smoke-test it on a private port, let it take the
    traffic, then stop `previous`: the port answers throughout (ml.serving.handoff)."""
    log.info("deploying %s v%s beside v%s on %s", model_name, version, previous.version, previous.url)
    candidate, result = _start_and_check(model_name, version, model_path, sha256, previous.host, previous.port,
                                         timeout_s, smoke, extra_args, smoke_port=_free_port(previous.host))
    if candidate is None:
        log.error("v%s failed: %s", version, result.detail)
        return DeployResult("local", version, previous.version, "rolled_back", True, previous.url,
                            f"v{version} failed ({result.detail}); v{previous.version} kept serving throughout",
                            result.to_dict())
    problem = _take_over(model_name, previous, candidate, timeout_s)
    if problem is not None:
        _discard(model_name, candidate)
        _signal(previous, handoff.PIN_SIGNAL)
        return DeployResult("local", version, previous.version, "rolled_back", True, previous.url,
                            f"v{version} passed its smoke test but could not take over {previous.url} ({problem}); "
                            f"v{previous.version} kept serving", result.to_dict())
    _trust(model_name, candidate)
    return DeployResult("local", version, previous.version, "deployed", False, candidate.url,
                        f"v{version} serving at {candidate.url}, took over from v{previous.version} without a gap: "
                        f"{result.detail}", result.to_dict())


def _take_over(model_name: str, previous: ServerState, candidate: ServerState, timeout_s: float) -> str | None:
    """Steer the port's new connections to `candidate`, then stop `previous` once none wait in its accept
    queue, and pin the traffic on `candidate`. None when done, else why the traffic did not move (then
    `previous` still serves)."""
    _signal(candidate, handoff.TAKE_SIGNAL)
    deadline = time.monotonic() + timeout_s
    while (answer := _ready(candidate.url)) is None or answer[1] != candidate.pid:
        if time.monotonic() > deadline or not alive(candidate.pid):
            return f"new connections did not reach it within {timeout_s:.0f}s"
        time.sleep(0.05)
    while _accept_queue(previous.pid, previous.port) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop_server(model_name, previous)
    _signal(candidate, handoff.PIN_SIGNAL)
    log.info("%s v%s took over %s from v%s", model_name, candidate.version, candidate.url, previous.version)
    return None


def _accept_queue(pid: int, port: int) -> int:
    """Connections waiting to be accepted by process `pid`'s listening socket(s) on `port` (Linux /proc;
    0 when it cannot be read)."""
    try:
        inodes = {link[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
                  if (link := os.readlink(f"/proc/{pid}/fd/{fd}")).startswith("socket:[")}
    except OSError:
        return 0
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for fields_ in (row.split() for row in rows):
            # sl local_address rem_address st tx_queue:rx_queue ... inode; a listener's rx_queue is its backlog
            if fields_[3] == "0A" and int(fields_[1].rsplit(":", 1)[1], 16) == port and fields_[9] in inodes:
                waiting += int(fields_[4].split(":")[1], 16)
    return waiting


def _free_port(host: str) -> int:
    """A loopback port free now, for a server's smoke test (the server fails to start if it is taken by then)."""
    smoke = handoff.smoke_host(host)
    with socket.socket(socket.AF_INET6 if ":" in smoke else socket.AF_INET) as probe:
        probe.bind((smoke, 0))
        return int(probe.getsockname()[1])


def _stop_and_start(model_name: str, previous: ServerState | None, version: str, model_path: Path, sha256: str,
                    *, host: str, port: int, timeout_s: float, smoke: SmokeCheck,
                    extra_args: Sequence[str] = ()) -> DeployResult:
    """Start `version` (`previous`, already stopped, restarts when it fails)."""
    log.info("deploying %s v%s on %s:%s", model_name, version, host, port)
    state, result = _start_and_check(model_name, version, model_path, sha256, host, port, timeout_s, smoke,
                                     extra_args)
    if state is not None:
        _trust(model_name, state)
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
    if restored is None:
        _write_state(model_name, None)
        return DeployResult("local", version, previous.version, "failed", False, None,
                            f"v{version} failed ({result.detail}) and restarting v{previous.version} failed too "
                            f"({back.detail})", result.to_dict())
    _trust(model_name, restored)
    return DeployResult("local", version, previous.version, "rolled_back", True, restored.url,
                        f"v{version} failed ({result.detail}); rolled back to v{previous.version}",
                        result.to_dict())

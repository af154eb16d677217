"""The fault suite: real processes killed at the worst moments, each followed by a consistency check.

    .venv/bin/python -m benchmarks.faults [--only NAME ...] [--json FILE]

A private folder holds a real MLflow tracking server (`mlflow server`, SQLite backend, proxied artifacts,
127.0.0.1 on a free port) and a CT_HOME; the demo model is bootstrapped once (`python -m ml run`: v1
serves on the local target). Then, one after the other:

| fault | how |
|---|---|
| `mlflow_killed` | the tracking server SIGKILLed while `ml run --force-retrain` trains; then restarted |
| `run_killed_train` | `python -m ml run --force-retrain` SIGKILLed during its train step |
| `run_killed_deploy` | the same, SIGKILLed during deploy, once the new version's server process exists |
| `two_runs` | two `ml run --force-retrain` of the model started together (CT_LOCK_TIMEOUT_S=5) |
| `supervisor_killed` | the model server (2 workers) SIGKILLed: its supervisor, not the workers |

After each fault comes the run that follows it (`python -m ml run`, the scheduled one), then `check`:
champion and challenger name registered versions, state.json names the champion (version and sha256) and
that process answers /ready with it, no other server of the model runs (orphans), no MLflow run of the
model is still RUNNING, every ended run has its run record and `ct.status`, no version was registered
twice from one run, and the model's lock and run lease are free. It prints one row per fault: the error
that named the cause and how long after the fault it came, and what the check found.

tests/faults/test_faults.py runs the same scenarios (pytest -m e2e) and asserts 0 problems.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "attrition"
ERROR_BOUND_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


@dataclass
class Workspace:
    """A tracking server, a CT_HOME and a model config, all under `root`."""

    root: Path
    mlflow_port: int = field(default_factory=free_port)
    serving_port: int = field(default_factory=free_port)
    mlflow: subprocess.Popen | None = None

    @property
    def home(self) -> Path:
        return self.root / "ct"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def config(self) -> Path:
        return self.root / "model.yaml"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CT_", "MLFLOW_", "AIRFLOW_CTX_"))}
        return env | {"CT_HOME": str(self.home), "MLFLOW_TRACKING_URI": self.tracking_uri,
                      "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
                      "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **extra}

    def write_config(self) -> None:
        raw = yaml.safe_load((REPO / "configs" / "employee-attrition.yaml").read_text())
        raw["data"] = {"reference": str(DATA / "reference.csv"), "current": str(DATA / "current_no_drift.csv")}
        raw["deploy"] = {**raw["deploy"], "port": self.serving_port, "host": "127.0.0.1"}
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(raw, sort_keys=False))

    def start_mlflow(self) -> None:
        store = self.root / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        log = (self.root / "mlflow.log").open("ab")
        self.mlflow = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
             "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.mlflow_port), "--workers", "1"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        server = self.mlflow

        def up() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited {server.returncode}:\n"
                                   + (self.root / "mlflow.log").read_text(errors="replace")[-3000:])
            return _answers(f"{self.tracking_uri}/health")

        wait_for("the MLflow server to answer", up, 300, 0.2)

    def kill_mlflow(self) -> None:
        if self.mlflow is not None and self.mlflow.poll() is None:
            os.killpg(self.mlflow.pid, signal.SIGKILL)
            self.mlflow.wait(10)

    def ml(self, *args: str, **env: str) -> subprocess.Popen:
        """`python -m ml ARGS --config ...` in the background; stderr to a file (`.stderr_path`)."""
        err = self.root / f"ml-{time.monotonic_ns()}.err"
        with err.open("wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "ml", *args, "--config", str(self.config)], cwd=REPO,
                                    env=self.env(**env), stdout=subprocess.PIPE, stderr=fh, text=True)
        proc.stderr_path = err  # type: ignore[attr-defined]
        return proc

    def stop_servers(self) -> None:
        os.environ["CT_HOME"] = str(self.home)
        from ml.deploy.local import find_servers, stop_server

        for server in find_servers(model_name(self)):
            stop_server(model_name(self), server)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def model_name(ws: Workspace) -> str:
    return yaml.safe_load(ws.config.read_text())["name"]


def stderr_of(proc: subprocess.Popen) -> str:
    return proc.stderr_path.read_text(errors="replace")  # type: ignore[attr-defined]


def finish(proc: subprocess.Popen, timeout_s: float = 300) -> tuple[int, str, str]:
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, stderr_of(proc)


def error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    return lines[-1][len("error: "):] if lines else ""


# ---- the consistency check -----------------------------------------------------------------------------

def check(ws: Workspace) -> list[str]:
    """Every half state found in the registry, the local target, MLflow's runs and the locks (empty: none)."""
    os.environ["CT_HOME"] = str(ws.home)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)
    name = model_name(ws)
    return [*_registry_problems(client, name), *_serving_problems(client, name), *_run_problems(client, name),
            *_lock_problems(name)]


def _registry_problems(client: Any, name: str) -> list[str]:
    versions = client.search_model_versions(f"name='{name}'")
    problems, runs = [], {}
    for mv in versions:
        if mv.run_id in runs:
            problems.append(f"v{mv.version} and v{runs[mv.run_id]} were both registered from run {mv.run_id}")
        runs[mv.run_id] = mv.version
    known = {str(mv.version) for mv in versions}
    aliases = client.get_registered_model(name).aliases if versions else {}
    problems += [f"alias {alias} -> v{v}, which is not registered" for alias, v in aliases.items()
                 if str(v) not in known]
    if versions and "champion" not in aliases:
        problems.append("versions are registered but no champion")
    return problems


def _serving_problems(client: Any, name: str) -> list[str]:
    from ml.deploy.local import find_servers, is_serving, read_state

    problems = []
    state = read_state(name)
    servers = find_servers(name)
    orphans = [s for s in servers if state is None or s.pid != state.pid]
    problems += [f"orphan server v{s.version} pid {s.pid} on port {s.port}" for s in orphans]
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except Exception:
        champion = None
    if champion is None:
        return problems + ([f"state.json names v{state.version} but there is no champion"] if state else [])
    if state is None:
        return [*problems, f"champion v{champion.version} is not served (no state.json)"]
    if state.version != str(champion.version) or state.sha256 != champion.tags.get("ct.onnx_sha256"):
        problems.append(f"state.json serves v{state.version}, the champion is v{champion.version}")
    if not is_serving(state):
        problems.append(f"state.json names pid {state.pid}, which is not a healthy server")
    elif _ready_version(state.url) != str(champion.version):
        problems.append(f"{state.url}/ready does not answer champion v{champion.version}")
    return problems


def _ready_version(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=5) as response:
            return str(json.loads(response.read())["model_version"])
    except (OSError, ValueError, KeyError):
        return None


def _run_problems(client: Any, name: str) -> list[str]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    problems = []
    for run in client.search_runs([experiment.experiment_id], max_results=500):
        key = run.data.tags.get("ct.run_key")
        if key is None:  # not a pipeline run (the alias ledger)
            continue
        if run.info.status == "RUNNING":
            problems.append(f"MLflow run of {key} is still RUNNING")
            continue
        if "ct.status" not in run.data.tags:
            problems.append(f"run {key} ended {run.info.status} without ct.status")
        if not [a for a in client.list_artifacts(run.info.run_id) if a.path == "run_record.json"]:
            problems.append(f"run {key} ended {run.info.status} without run_record.json")
    return problems


def _lock_problems(name: str) -> list[str]:
    from ml.locks import lease_holder, lock_dir

    problems = []
    if (holder := lease_holder(name)) is not None:
        problems.append(f"run lease still held by {holder['run_key']}")
    if (lock_dir() / f"{name}.holder.json").exists():
        problems.append("the model lock names a holder while no run is going")
    return problems


# ---- the faults -------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    fault: str
    error: str  # the message that named the cause
    seconds_to_error: float | None  # from the fault to that message
    follow_up: str  # status of the run that followed
    problems: list[str]
    orphans: int
    detail: dict[str, Any] = field(default_factory=dict)


def bootstrap(ws: Workspace) -> None:
    ws.write_config()
    ws.start_mlflow()
    code, _, err = finish(ws.ml("run"))
    if code != 0:
        raise RuntimeError(f"bootstrap run failed ({code}):\n{err[-3000:]}")


def follow_up(ws: Workspace) -> str:
    code, out, err = finish(ws.ml("run"))
    if code not in (0, 1) or not out.strip():
        return f"exit {code}: {error_line(err) or err[-300:]}"
    return json.loads(out)["status"]


def _outcome(ws: Workspace, fault: str, error: str, seconds: float | None, **detail: Any) -> Outcome:
    status = follow_up(ws)
    return _checked(ws, fault, error, seconds, status, **detail)


def _checked(ws: Workspace, fault: str, error: str, seconds: float | None, status: str, **detail: Any) -> Outcome:
    problems = check(ws)
    return Outcome(fault, error, None if seconds is None else round(seconds, 1), status, problems,
                   sum(p.startswith("orphan") for p in problems), detail)


def _in_step(proc: subprocess.Popen, step: str) -> bool:
    return f"INFO ml.pipeline: step {step} (run" in stderr_of(proc) or proc.poll() is not None


def _killed_record(ws: Workspace, run_key: str) -> dict[str, Any]:
    from ml.tracking import safe_name

    path = ws.home / "runs" / model_name(ws) / safe_name(run_key) / "run_record.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _run_key(proc: subprocess.Popen) -> str:
    marker = "step validate (run "
    text = stderr_of(proc)
    return text[text.index(marker) + len(marker):].split(")")[0] if marker in text else ""


def _killed_run(ws: Workspace, fault: str, step: str, ready: Callable[[subprocess.Popen], bool]) -> Outcome:
    """`ml run --force-retrain` SIGKILLed once `ready`; the run that follows closes it: the error is its
    record's, timed from the kill to the moment that record exists."""
    proc = ws.ml("run", "--force-retrain")
    wait_for(f"ml run to reach {step}", lambda: ready(proc), 600, 0.02)
    proc.kill()
    proc.wait(10)
    killed = time.monotonic()
    key = _run_key(proc)
    follower = ws.ml("run")
    wait_for("the killed run's record", lambda: _killed_record(ws, key) or follower.poll() is not None, 120, 0.1)
    seconds = time.monotonic() - killed
    code, out, err = finish(follower)
    status = json.loads(out)["status"] if out.strip() else f"exit {code}: {error_line(err)}"
    record = _killed_record(ws, key)
    error = "; ".join(f"{k}: {v}" for k, v in record.get("errors", {}).items())
    return _checked(ws, fault, error, seconds, status, run_key=key, killed_status=record.get("status"))


def run_killed_train(ws: Workspace) -> Outcome:
    return _killed_run(ws, "run_killed_train", "train", lambda p: _in_step(p, "train"))


def run_killed_deploy(ws: Workspace) -> Outcome:
    os.environ["CT_HOME"] = str(ws.home)
    from ml.deploy.local import find_servers, read_state

    before = read_state(model_name(ws))

    def new_server_started(proc: subprocess.Popen) -> bool:
        return proc.poll() is not None or (_in_step(proc, "deploy") and any(
            before is None or s.pid != before.pid for s in find_servers(model_name(ws))))

    return _killed_run(ws, "run_killed_deploy", "deploy", new_server_started)


def mlflow_killed(ws: Workspace) -> Outcome:
    proc = ws.ml("run", "--force-retrain")
    wait_for("ml run to reach train", lambda: _in_step(proc, "train"), 600, 0.02)
    ws.kill_mlflow()
    killed = time.monotonic()
    code, _, err = finish(proc, 300)
    seconds = time.monotonic() - killed
    ws.start_mlflow()
    return _outcome(ws, "mlflow_killed", error_line(err), seconds, exit_code=code)


def two_runs(ws: Workspace) -> Outcome:
    first = ws.ml("run", "--force-retrain", CT_LOCK_TIMEOUT_S="5")
    wait_for("the first run to take the lock", lambda: _in_step(first, "validate"), 600, 0.02)
    second = ws.ml("run", "--force-retrain", CT_LOCK_TIMEOUT_S="5")
    started = time.monotonic()
    code2, _, err2 = finish(second)
    seconds = time.monotonic() - started
    code1, out1, _ = finish(first)
    status1 = json.loads(out1)["status"] if out1.strip() else f"exit {code1}"
    return _outcome(ws, "two_runs", error_line(err2), seconds, first=status1, second_exit=code2)


def supervisor_killed(ws: Workspace) -> Outcome:
    """The served champion redeployed with 2 workers, then its supervisor SIGKILLed."""
    import psutil

    os.environ["CT_HOME"] = str(ws.home)
    from ml.deploy.local import read_state

    ws.stop_servers()
    code, _, err = finish(ws.ml("run", CT_WORKERS="2"))  # the run restores the champion, with 2 workers
    state = read_state(model_name(ws))
    if state is None or not psutil.pid_exists(state.pid):
        raise RuntimeError(f"no server to kill after the restore run (exit {code}, state {state}):\n{err[-3000:]}")
    workers = psutil.Process(state.pid).children()
    os.kill(state.pid, signal.SIGKILL)
    killed = time.monotonic()
    _, alive = psutil.wait_procs(workers, timeout=30)
    workers_gone_s = time.monotonic() - killed
    status = json.loads(finish(ws.ml("status"))[1])["local_server"]
    seconds = time.monotonic() - killed
    return _outcome(ws, "supervisor_killed", status.get("problem", "") if status else "", seconds,
                    workers=len(workers), workers_left=len(alive), workers_gone_s=round(workers_gone_s, 1))


FAULTS: dict[str, Callable[[Workspace], Outcome]] = {
    "mlflow_killed": mlflow_killed, "run_killed_train": run_killed_train, "run_killed_deploy": run_killed_deploy,
    "two_runs": two_runs, "supervisor_killed": supervisor_killed,
}


def table(outcomes: list[Outcome]) -> str:
    rows = ["| fault | error naming the cause | s to error | run that follows | half states | orphan servers |",
            "|---|---|---:|---|---:|---:|"]
    for o in outcomes:
        error = (o.error[:140] + "...") if len(o.error) > 140 else o.error
        rows.append(f"| {o.fault} | {error.replace('|', '/')} | {o.seconds_to_error} | {o.follow_up} | "
                    f"{len(o.problems)} | {o.orphans} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(FAULTS), help="run only these faults")
    parser.add_argument("--json", type=Path, help="write the outcomes as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ct-faults-") as tmp:
        ws = Workspace(Path(tmp))
        try:
            bootstrap(ws)
            outcomes = [FAULTS[name](ws) for name in (args.only or FAULTS)]
        finally:
            ws.stop_servers()
            ws.kill_mlflow()
    print(table(outcomes))
    for o in outcomes:
        for problem in o.problems:
            print(f"{o.fault}: {problem}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())

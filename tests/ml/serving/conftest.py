"""Fixtures of the serving tests: a small attrition-like model trained once per session, sample
records, and real server processes (`python -m ml.serving` on 127.0.0.1 on a free port, output
captured to a file) that are always killed at teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]

NUMERIC = ["age", "tenure", "satisfaction_score", "performance_rating", "work_hours", "projects_count",
           "promotion_flag", "salary"]
CATEGORICAL = ["department"]
TARGET = "attrition"


def config_dict(reference: str = "reference.csv") -> dict:
    return {"name": "attrition-test", "target": TARGET, "positive_class": 1,
            "features": {"numeric": NUMERIC, "categorical": CATEGORICAL}, "data": {"reference": reference}}


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    sha256: str
    config: object
    reference: object  # pandas.DataFrame
    pipeline: object
    classes: list[str]


def sample_records(n: int, seed: int = 11, scenario: str = "no_drift") -> list[dict]:
    """n valid request records (JSON-ready Python values)."""
    from ml.datasets.attrition import generate

    frame = generate(scenario, n, seed)
    records = []
    for row in frame.to_dict(orient="records"):
        record = {c: float(row[c]) if isinstance(row[c], float) else int(row[c]) for c in NUMERIC}
        record |= {c: str(row[c]) for c in CATEGORICAL}
        records.append(record)
    return records


@dataclass(frozen=True)
class Family:
    """One metric family of a /metrics answer, keyed by its exposed name (counters with `_total`)."""

    type: str
    help: str
    samples: dict[tuple[str, frozenset], float]  # (sample name, frozenset of label items) -> value

    @property
    def label_names(self) -> set[str]:
        return {k for _, labels in self.samples for k, _ in labels} - {"le"}

    def total(self, sample: str, **match: str) -> float:
        """Sum of the samples named `sample` whose labels include `match` (0 when there are none)."""
        wanted = set(match.items())
        return sum(v for (name, labels), v in self.samples.items() if name == sample and wanted <= labels)


def parse_metrics(text: str) -> dict[str, Family]:
    """A Prometheus text exposition, parsed with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        samples = {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}
        assert name not in out, f"family {name} exposed twice"
        out[name] = Family(type=family.type, help=family.documentation, samples=samples)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A `python -m ml.serving` child process; output goes to a file so a full pipe never blocks it."""

    proc: subprocess.Popen
    port: int
    output_path: Path
    exit_code: int | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def client(self) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=10)
        self.clients.append(client)
        return client

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} before ready:\n{self.output}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready within {timeout_s} s:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.exit_code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait(5)
            raise AssertionError(f"server ignored signal {sig} for {timeout_s} s:\n{self.output}") from None
        return self.exit_code


def launch(tmp_path: Path, env: dict[str, str], args: list[str] | None = None) -> ServerProcess:
    port = free_port()
    out = tmp_path / f"server-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CT_")}
    full_env |= {"CT_PORT": str(port), "CT_HOST": "127.0.0.1", "PYTHONPATH": str(REPO),
                 "CT_HOME": str(tmp_path / "ct-home"), **env}
    with out.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ml.serving", *(args or [])], cwd=REPO, env=full_env,
                                stdout=fh, stderr=subprocess.STDOUT)
    return ServerProcess(proc=proc, port=port, output_path=out)



@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    from ml.challenger import fit_challenger
    from ml.config import parse_config
    from ml.datasets.attrition import generate
    from ml.export import sha256_bytes, to_onnx

    reference = generate("reference", 1200, 7)
    config = parse_config(config_dict())
    challenger = fit_challenger(config, reference, None)
    data = to_onnx(challenger.pipeline, config, challenger.data.classes)
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    path.write_bytes(data)
    return TrainedModel(path=path, sha256=sha256_bytes(data), config=config, reference=reference,
                        pipeline=challenger.pipeline, classes=challenger.data.classes)


@pytest.fixture()
def record() -> dict:
    return sample_records(1)[0]


@pytest.fixture()
def start_server(tmp_path: Path):
    """Factory: start_server(env, args, ready=True) -> ServerProcess; every process is killed at teardown."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str], args: list[str] | None = None, ready: bool = True) -> ServerProcess:
        server = launch(tmp_path, env, args)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


@pytest.fixture()
def make_records():
    """make_records(n, seed=11, scenario="no_drift") -> n valid request records."""
    return sample_records


@pytest.fixture(scope="module")
def module_server(trained, tmp_path_factory):
    """One server for a whole test module: version "7", log on, CT_MAX_BATCH=50, 64 KiB bodies."""
    tmp = tmp_path_factory.mktemp("server")
    proc = launch(tmp, {"CT_MODEL_URI": str(trained.path), "CT_MODEL_SHA256": trained.sha256,
                        "CT_MODEL_VERSION": "7", "CT_PREDICTION_LOG_DIR": str(tmp / "log"), "CT_MAX_BATCH": "50",
                        "CT_MAX_BODY_BYTES": "65536"})
    try:
        proc.wait_ready()
        yield proc
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)

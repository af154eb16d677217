"""A real `mlflow server` for tests: SQLite stores and proxied artifacts under a temp folder, 127.0.0.1 on a
free port, its own process group (stopped with it, job consumers included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port


@contextmanager
def mlflow_server(root: Path, *options: str, env: Mapping[str, str] | None = None,
                  timeout_s: float = 180.0) -> Iterator[str]:
    """Start `mlflow server <options>` with its stores in `root`; yield its URL once /health answers."""
    port = free_port()
    with (root / "server.log").open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", *options, "--backend-store-uri",
             f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert process.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"MLflow did not become healthy in {timeout_s:.0f} s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

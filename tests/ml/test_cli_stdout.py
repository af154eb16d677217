"""`python -m ml run` against a REAL remote tracking server: stdout is exactly one JSON document.

MLflow writes "🏃 View run <name> at: <url>" and "🧪 View experiment at: <url>" to stdout whenever a run
on an http(s) tracking server ends (train's logged model, the alias ledger, the run record). The CLI
routes everything printed during a command to stderr, so `python -m ml run ... | jq` works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import DATA, REPO, write_config
from tests.mlflow_server import mlflow_server


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-remote")) as url:
        yield url


def test_run_prints_only_its_record_on_stdout_with_a_tracking_server(tracking_server, tmp_path):
    # approval required: the run trains, registers and stops before deploying (no model server to clean up)
    config = write_config(tmp_path / "c", promotion={"approval": "required"})
    env = {**os.environ, "CT_HOME": str(tmp_path / "ct"), "MLFLOW_TRACKING_URI": tracking_server}
    out = subprocess.run([sys.executable, "-m", "ml", "run", "--config", str(config), "--current",
                          str(DATA / "current_unlabelled.csv")], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(out.stdout)  # the whole of stdout is one document
    assert record["status"] == "not_approved" and record["challenger_version"] == "1"
    # MLflow did print its links: they went to stderr
    assert f"View run {record['run_key']} at: {tracking_server}" in out.stderr
    assert "View run" not in out.stdout

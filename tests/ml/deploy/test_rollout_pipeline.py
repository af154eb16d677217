"""`deploy.strategy: canary` in the pipeline (`python -m ml run`, the functions the DAG calls): the first version
is deployed as usual; a retrained one starts as a canary beside the champion, champion does not move, the run
record says `rolling_out`; the canary's test then decides (here: the operator's rollback, as recorded)."""

from __future__ import annotations

import httpx

from ml import rollout_checks
from ml.config import load_config
from ml.deploy import canary
from ml.deploy.local import read_state
from ml.pipeline import run_pipeline
from ml.registry import CHAMPION, alias_log, version_by_alias
from ml.tracking import mlflow_client
from tests.conftest import DATA, write_config


def test_a_retrained_version_starts_as_a_canary_and_champion_waits(ct_home, tmp_path):
    config = load_config(write_config(tmp_path / "c", deploy={"strategy": "canary", "canary": {"fraction": 0.3}}))
    first = run_pipeline(config, "run-1")
    assert first.status == "promoted" and first.champion_version == "1"
    drifted = config.with_data(None, str(DATA / "current_covariate_drift.csv"))
    second = run_pipeline(drifted, "run-2", force_retrain=True)
    assert second.status == "rolling_out", second.reason
    assert second.challenger_version == "2" and not second.promoted
    client = mlflow_client()
    assert str(version_by_alias(client, config.name, CHAMPION).version) == "1"
    assert str(version_by_alias(client, config.name, "canary").version) == "2"
    running = canary.read_rollout(config.name)
    assert running is not None and (running.kind, running.version, running.fraction) == ("canary", "2", 0.3)
    stats = httpx.get(f"{read_state(config.name).url}/variants").json()
    assert stats["canary_fraction"] == 0.3 and stats["variants"]["canary"]["version"] == "2"
    done = rollout_checks.end_canary(config, "rollback", "operator: not this week")
    assert done.status == "rolled_back" and version_by_alias(client, config.name, "canary") is None
    kinds = [(e["alias"], e["kind"], e["version"]) for e in alias_log(client, config.name)]
    assert kinds[-3:] == [("canary", "canary_start", "2"), ("canary", "canary_test", "2"),
                          ("canary", "canary_rollback", "2")]
    assert httpx.get(f"{read_state(config.name).url}/variants").json() == {"variants": {}}

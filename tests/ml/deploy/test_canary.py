"""Safe rollout on the local target, end to end with real processes: a real MLflow store, the model server
as a real process on 127.0.0.1, traffic and /feedback labels over HTTP.

* shadow: the challenger scores every request, the champion's answers are those of the champion's file,
  no request fails, the shadow report gives agreement, score distances and both metrics on the labels;
* canary: a worse canary is rolled back by the test, a better one promoted (champion moves to it), and
  the alias ledger and the rollout's MLflow run show every step.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest

from ml import rollout_checks
from ml.config import load_config
from ml.data import label_key
from ml.deploy import canary
from ml.deploy.local import read_state
from ml.deploy.smoke import smoke_records
from ml.export import OnnxModel
from ml.pipeline import deploy_version
from ml.registry import CHAMPION, SHA_TAG, alias_log, register_version, version_by_alias
from ml.tracking import get_or_create_experiment, mlflow_client
from tests.conftest import DATA, write_config

TRAFFIC = DATA / "current_no_drift.csv"


def _register(config, frame: pd.DataFrame, labels: pd.Series) -> str:
    """Fit on (frame, labels), export to ONNX, register as a new version (as the register step tags it)."""
    import mlflow
    import mlflow.onnx
    import onnx

    from ml.challenger import fit_challenger
    from ml.export import sha256_bytes, to_onnx

    fitted = fit_challenger(config, frame.assign(**{config.target: labels}), None)
    data = to_onnx(fitted.pipeline, config, fitted.data.classes)
    client = mlflow_client()
    run = client.create_run(get_or_create_experiment(client, config.name))
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.onnx.log_model(onnx.load_model_from_string(data), name="model", save_as_external_data=False)
    version, _ = register_version(client, config.name, info.model_uri, info.model_id, run.info.run_id,
                                  {SHA_TAG: sha256_bytes(data)})
    return str(version.version)


@pytest.fixture(scope="module")
def versions(module_ct_home, tmp_path_factory):
    """config, {weak, good, bad} versions: labels permuted (no skill), the true labels, all labels flipped."""
    path = write_config(tmp_path_factory.mktemp("config"),
                        # routed by a feature, not the random prediction id: the same split, the same verdicts
                        deploy={"canary": {"fraction": 0.5, "min_samples": 150, "bootstrap_rounds": 300,
                                           "key": "salary"}})
    config = load_config(path)
    reference = pd.read_csv(DATA / "reference.csv")
    y = reference[config.target]
    permuted = pd.Series(np.random.default_rng(0).permutation(y.to_numpy()), index=y.index)
    found = {"weak": _register(config, reference, permuted), "good": _register(config, reference, y),
             "bad": _register(config, reference, 1 - y)}
    return config, found


def _send(url: str, config, rows: pd.DataFrame, client: httpx.Client) -> list[dict]:
    """POST the rows as prediction batches, then their true labels as feedback; the answers."""
    records = smoke_records(rows, config, len(rows))
    answers = []
    for start in range(0, len(records), 100):
        response = client.post(f"{url}/predict/batch", json={"records": records[start:start + 100]})
        assert response.status_code == 200, response.text
        answers += response.json()["predictions"]
    labels = [label_key(v) for v in rows[config.target]]
    for start in range(0, len(answers), 100):
        items = [{"prediction_id": a["prediction_id"], "label": label}
                 for a, label in zip(answers[start:start + 100], labels[start:start + 100], strict=True)]
        assert client.post(f"{url}/feedback", json={"items": items}).status_code == 202
    return answers


def _ledger(config) -> list[tuple[str, str, str]]:
    return [(e["alias"], e["kind"], e["version"]) for e in alias_log(mlflow_client(), config.name)]


def test_shadow_scores_every_request_and_the_report_compares_them(versions):
    config, v = versions
    assert deploy_version(config, v["weak"])[1].ok
    started = canary.start_shadow(config, v["good"])
    url = read_state(config.name).url
    rows = pd.read_csv(TRAFFIC).head(400)
    with httpx.Client(timeout=10) as client:
        answers = _send(url, config, rows, client)
    assert all(a["model_version"] == v["weak"] for a in answers)
    champion_file = OnnxModel.load(canary._fetch(config, v["weak"])[0])
    expected = champion_file.predict_proba(pd.DataFrame(smoke_records(rows, config, len(rows))))[:, 1]
    assert [a["probabilities"]["1"] for a in answers] == pytest.approx(expected.tolist(), abs=1e-6)
    report = _wait_for(lambda: canary_report(config), lambda r: r.rows == 400 and r.labelled == 400)
    assert report.shadow_version == v["good"] and report.champion_versions == [v["weak"]]
    assert 0.0 < report.agreement < 1.0 and report.score_ks_p_value is not None
    assert report.shadow_metric > report.champion_metric and report.interval[0] > 0
    looked = rollout_checks.check_rollout(config)  # what the rollout DAG's task does
    assert (looked["kind"], looked["rows"], looked["labelled"]) == ("shadow", 400, 400)
    stopped = canary.stop_shadow(config)
    assert stopped.status == "stopped" and canary.read_rollout(config.name) is None
    assert _ledger(config)[-2:] == [("shadow", "shadow_start", v["good"]), ("shadow", "shadow_stop", v["good"])]
    assert version_by_alias(mlflow_client(), config.name, "shadow") is None
    assert started.run_key.startswith("shadow-")


def canary_report(config):
    from ml.shadow import compare_shadow

    return compare_shadow(config)


def _wait_for(get, done, timeout_s: float = 10.0):
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = get()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _canary_round(config, version: str, rows: pd.DataFrame):
    canary.start_canary(config, version)
    url = read_state(config.name).url
    with httpx.Client(timeout=10) as client:
        answers = _send(url, config, rows, client)
        variants = client.get(f"{url}/variants").json()["variants"]
    served = {a["model_version"] for a in answers}
    assert variants["canary"]["version"] == version and variants["canary"]["errors"] == 0
    return served, _wait_for(lambda: rollout_checks.evaluate_canary(config, act=False),
                             lambda r: r.verdict != "waiting")


def test_a_worse_canary_is_rolled_back_and_a_better_one_promoted(versions):
    config, v = versions
    assert deploy_version(config, v["weak"])[1].ok
    rows = pd.read_csv(TRAFFIC)
    waiting = canary.start_canary(config, v["bad"])
    assert rollout_checks.evaluate_canary(config).verdict == "waiting"  # no labels yet
    rollout_checks.end_canary(config, "rollback", "restart the round")
    assert waiting.fraction == 0.5

    served, verdict = _canary_round(config, v["bad"], rows.iloc[:600])
    assert served == {v["weak"], v["bad"]}
    assert verdict.verdict == "rollback" and verdict.test.difference < 0, verdict.reason
    rolled = rollout_checks.evaluate_canary(config)
    assert rolled.verdict == "rollback"
    assert canary.read_rollout(config.name) is None
    assert httpx.get(f"{read_state(config.name).url}/variants").json() == {"variants": {}}
    assert str(version_by_alias(mlflow_client(), config.name, CHAMPION).version) == v["weak"]

    served, verdict = _canary_round(config, v["good"], rows.iloc[600:1200])
    assert verdict.verdict == "promote" and verdict.test.interval[0] > 0, verdict.reason
    promoted = rollout_checks.evaluate_canary(config)
    assert promoted.verdict == "promote"
    assert str(version_by_alias(mlflow_client(), config.name, CHAMPION).version) == v["good"]
    assert httpx.get(f"{read_state(config.name).url}/ready").json()["model_version"] == v["good"]
    assert version_by_alias(mlflow_client(), config.name, "canary") is None

    steps = [e for e in _ledger(config) if e[0] in ("canary", CHAMPION)]
    assert steps[-7:] == [("canary", "canary_start", v["bad"]), ("canary", "canary_test", v["bad"]),
                          ("canary", "canary_rollback", v["bad"]), ("canary", "canary_start", v["good"]),
                          ("canary", "canary_test", v["good"]), (CHAMPION, "promote", v["good"]),
                          ("canary", "canary_promote", v["good"])]
    runs = mlflow_client().search_runs([mlflow_client().get_experiment_by_name(config.name).experiment_id],
                                       filter_string="tags.`ct.rollout` = 'canary'")
    documents = [json.loads(_artifact(r.info.run_id)) for r in runs]
    assert {d["status"] for d in documents} == {"rolled_back", "promoted"}
    promoted_doc = next(d for d in documents if d["status"] == "promoted")
    assert [s["step"] for s in promoted_doc["steps"]] == ["canary_start", "canary_test", "canary_promote"]


def _artifact(run_id: str) -> str:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return Path(mlflow_client().download_artifacts(run_id, "rollout.json", tmp)).read_text()

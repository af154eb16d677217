"""models:/ URIs: the server resolves an alias or version through a (temporary, local) MLflow
registry, verifies the artifact against the version's sha256 tag, and refuses one that does not match."""

from __future__ import annotations

import signal
import time

import pytest

from ml.registry import SHA_TAG, ensure_registered_model
from ml.tracking import get_or_create_experiment, mlflow_client
from tests.ml.serving.conftest import parse_metrics, sample_records

NAME = "attrition-serving-test"


@pytest.fixture(scope="module")
def registry(trained, tmp_path_factory):
    """A registry in a temporary CT_HOME with v1 (good, alias champion) and v2 (sha tag does not match)."""
    home = tmp_path_factory.mktemp("registry") / "ct-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CT_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return {"CT_HOME": str(home)}, _populate(trained)


def _populate(trained) -> list[str]:
    client = mlflow_client()
    experiment_id = get_or_create_experiment(client, NAME)
    ensure_registered_model(client, NAME)
    versions = []
    for sha in (trained.sha256, "0" * 64):
        run = client.create_run(experiment_id)
        client.log_artifact(run.info.run_id, str(trained.path), "model")
        mv = client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                         tags={SHA_TAG: sha})
        versions.append(mv.version)
    client.set_registered_model_alias(NAME, "champion", versions[0])
    return versions


def test_alias_resolves_to_registry_version(trained, registry, start_server):
    env, versions = registry
    server = start_server(env | {"CT_MODEL_URI": f"models:/{NAME}@champion", "CT_MODEL_VERSION": "ignored"})
    model = server.client().get("/model").json()
    assert model["version"] == str(versions[0]) and model["sha256"] == trained.sha256
    assert server.client().get("/ready").json()["model_version"] == str(versions[0])
    assert server.stop(signal.SIGTERM) == 0


def test_registry_sha_mismatch_is_refused(registry, start_server):
    env, versions = registry
    server = start_server(env | {"CT_MODEL_URI": f"models:/{NAME}/{versions[1]}"}, ready=False)
    assert server.proc.wait(60) == 3
    errors = [line for line in server.output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"models:/{NAME}/{versions[1]}" in errors[0] and "sha256" in errors[0]


def test_unknown_alias_is_refused(registry, start_server):
    env, _ = registry
    server = start_server(env | {"CT_MODEL_URI": f"models:/{NAME}@nope"}, ready=False)
    assert server.proc.wait(60) == 3
    assert "has no alias 'nope'" in server.output


def test_following_an_alias_switches_only_to_verified_versions(trained, registry, start_server):
    """CT_MODEL_FOLLOW_S, with two workers: each tracks where the alias points. A version whose file does
    not match its sha256 tag is refused (the current one keeps serving); a good one takes over in every
    worker without a failed request."""
    env, versions = registry
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CT_HOME", env["CT_HOME"])
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        client = mlflow_client()
        client.set_registered_model_alias(NAME, "live", versions[0])
        server = start_server(env | {"CT_MODEL_URI": f"models:/{NAME}@live", "CT_MODEL_FOLLOW_S": "1",
                                     "CT_WORKERS": "2"})
        http = server.client()
        record = sample_records(1)[0]
        assert http.post("/predict", json=record).json()["model_version"] == str(versions[0])

        client.set_registered_model_alias(NAME, "live", versions[1])  # its sha256 tag does not match the file
        _wait_for(lambda: server.output.count(f"version {versions[1]} refused") == 2, server)
        assert http.get("/ready").json()["model_version"] == str(versions[0])

        good = _populate_version(client, trained)
        client.set_registered_model_alias(NAME, "live", good)
        answered: list[str] = []

        def every_worker_switched() -> bool:
            for _ in range(20):
                response = http.post("/predict", json=record)
                assert response.status_code == 200, response.text
                answered.append(response.json()["model_version"])
            return server.output.count(f"to version {good}") == 2 and answered[-1] == str(good)

        _wait_for(every_worker_switched, server)
        assert set(answered) <= {str(versions[0]), str(good)}
        assert {http.get("/model").json()["version"] for _ in range(10)} == {str(good)}
        def scrape() -> dict:
            return parse_metrics(http.get("/metrics").text)

        _wait_for(lambda: scrape()["ct_model_switches_total"].total("ct_model_switches_total") == 2, server)
        metrics = scrape()
        assert metrics["ct_model_switch_refused_total"].total("ct_model_switch_refused_total") == 2
        # both workers switched: the old version's label set is gone, the new one reads 1
        info = metrics["ct_model_info"].samples
        assert [dict(labels)["version"] for _, labels in info] == [str(good)] and set(info.values()) == {1}
    assert server.stop(signal.SIGTERM) == 0


def _populate_version(client, trained) -> str:
    experiment_id = get_or_create_experiment(client, NAME)
    run = client.create_run(experiment_id)
    client.log_artifact(run.info.run_id, str(trained.path), "model")
    mv = client.create_model_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                     tags={SHA_TAG: trained.sha256})
    return str(mv.version)


def _wait_for(condition, server, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s:\n{server.output}")
        time.sleep(0.2)

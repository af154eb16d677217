"""models:/ URIs: the server resolves an alias or version through a (temporary, local) MLflow
registry, verifies the artifact against the version's sha256 tag, and refuses one that does not match."""

from __future__ import annotations

import signal

import pytest

from ml.registry import SHA_TAG, ensure_registered_model
from ml.tracking import get_or_create_experiment, mlflow_client

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

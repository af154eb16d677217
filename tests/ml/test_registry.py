import json

import pytest

from ml.errors import RegistryError
from ml.registry import (
    ALIAS_LOG_TAG,
    CHAMPION,
    SHA_TAG,
    fetch_onnx,
    move_alias,
    register_version,
    rollback_target,
    version_by_alias,
)
from ml.tracking import get_or_create_experiment, mlflow_client


@pytest.fixture(scope="module")
def logged_model(module_ct_home):
    """A real MLflow run with a logged ONNX model in a temp SQLite store."""
    import mlflow
    import mlflow.onnx
    import onnx
    import pandas as pd

    from ml.challenger import fit_challenger
    from ml.config import parse_config
    from ml.export import sha256_bytes, to_onnx

    config = parse_config({"name": "reg-test", "target": "y", "positive_class": 1, "features": {"numeric": ["a"]},
                           "data": {"reference": "r.csv"}})
    frame = pd.DataFrame({"a": range(200), "y": [i % 2 for i in range(200)]})
    challenger = fit_challenger(config, frame, None)
    data = to_onnx(challenger.pipeline, config, challenger.data.classes)
    client = mlflow_client()
    experiment = get_or_create_experiment(client, "reg-test")
    run = client.create_run(experiment)
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.onnx.log_model(onnx.load_model_from_string(data), name="model", save_as_external_data=False)
    return client, run.info.run_id, info, sha256_bytes(data)


def test_registration_is_idempotent_per_run(logged_model):
    client, run_id, info, sha = logged_model
    first, created = register_version(client, "idem", info.model_uri, info.model_id, run_id, {SHA_TAG: sha})
    again, created_again = register_version(client, "idem", info.model_uri, info.model_id, run_id, {SHA_TAG: sha})
    assert created and not created_again and first.version == again.version
    assert len(client.search_model_versions("name='idem'")) == 1


def test_alias_moves_are_logged_and_rollback_is_one_lookup(logged_model):
    client, run_id, info, sha = logged_model
    import mlflow

    v1, _ = register_version(client, "reg-test", info.model_uri, info.model_id, run_id, {SHA_TAG: sha})
    run2 = client.create_run(client.get_experiment_by_name("reg-test").experiment_id)
    v2, _ = register_version(client, "reg-test", info.model_uri, info.model_id, run2.info.run_id, {SHA_TAG: sha})
    with pytest.raises(RegistryError, match="no 'champion' alias"):
        rollback_target(client, "reg-test")
    move_alias(client, "reg-test", CHAMPION, v1.version, reason="bootstrap")
    with pytest.raises(RegistryError, match="first 'champion'"):
        rollback_target(client, "reg-test")
    move = move_alias(client, "reg-test", CHAMPION, v2.version, reason="drift")
    assert move.previous == "1" and move.by.startswith("cli:")
    again = move_alias(client, "reg-test", CHAMPION, v2.version, reason="again")  # no-op: the recorded move
    assert (again.previous, again.reason) == ("1", "drift")
    log = json.loads(client.get_registered_model("reg-test").tags[ALIAS_LOG_TAG])
    assert [(e["version"], e["previous"], e["reason"]) for e in log] == [("1", None, "bootstrap"), ("2", "1", "drift")]
    assert client.get_model_version("reg-test", "2").tags["ct.champion.previous"] == "1"
    assert rollback_target(client, "reg-test") == ("2", "1")
    assert str(version_by_alias(client, "reg-test", CHAMPION).version) == "2"
    assert mlflow.get_tracking_uri().startswith("sqlite:")

    # The audit log is capped; when the champion's entry has been trimmed away, the version's own
    # ct.champion.* stamp still names the version to return to.
    client.set_registered_model_tag("reg-test", ALIAS_LOG_TAG, "[]")
    assert rollback_target(client, "reg-test") == ("2", "1")


def test_a_failed_alias_move_leaves_its_record_and_a_retry_completes_it(logged_model, monkeypatch):
    """The record is written before the alias moves, so an error in between never leaves a moved
    alias without the entry rollback needs; the retry moves it."""
    client, run_id, info, sha = logged_model
    name = "reg-order"
    v1, _ = register_version(client, name, info.model_uri, info.model_id, run_id, {SHA_TAG: sha})
    run2 = client.create_run(client.get_experiment_by_name("reg-test").experiment_id)
    v2, _ = register_version(client, name, info.model_uri, info.model_id, run2.info.run_id, {SHA_TAG: sha})
    move_alias(client, name, CHAMPION, v1.version, reason="bootstrap")
    real = client.set_registered_model_alias

    def flaky(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(client, "set_registered_model_alias", flaky)
    with pytest.raises(RuntimeError):
        move_alias(client, name, CHAMPION, v2.version, reason="drift")
    assert str(version_by_alias(client, name, CHAMPION).version) == "1"  # not moved...
    monkeypatch.setattr(client, "set_registered_model_alias", real)
    move_alias(client, name, CHAMPION, v2.version, reason="drift")  # ...until the retry
    assert str(version_by_alias(client, name, CHAMPION).version) == "2"
    assert rollback_target(client, name) == ("2", "1")


def test_fetch_onnx_verifies_the_registered_sha(logged_model, tmp_path):
    client, run_id, info, sha = logged_model
    version, _ = register_version(client, "fetch", info.model_uri, info.model_id, run_id, {SHA_TAG: sha})
    path, digest = fetch_onnx(client, "fetch", version.version, tmp_path / "v1")
    assert digest == sha and path.exists()
    client.set_model_version_tag("fetch", version.version, SHA_TAG, "0" * 64)
    with pytest.raises(RegistryError, match="does not match"):
        fetch_onnx(client, "fetch", version.version, tmp_path / "other")


def test_mlflow_client_leaves_the_environment_alone(ct_home):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; left there it would pin every later call
    (and child process, e.g. the model server) to this store instead of following CT_HOME."""
    import os

    mlflow_client()
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ

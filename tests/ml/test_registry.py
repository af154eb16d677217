import json

import pytest

from ml.errors import RegistryError
from ml.registry import (
    ALIAS_LOG_TAG,
    CHAMPION,
    LEDGER_POINTER_TAG,
    SHA_TAG,
    alias_log,
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
    log = alias_log(client, "reg-test")
    assert [(e["version"], e["previous"], e["reason"]) for e in log] == [("1", None, "bootstrap"), ("2", "1", "drift")]
    assert ALIAS_LOG_TAG not in client.get_registered_model("reg-test").tags  # the capped tag is not written
    assert client.get_model_version("reg-test", "2").tags["ct.champion.previous"] == "1"
    assert rollback_target(client, "reg-test") == ("2", "1")
    assert str(version_by_alias(client, "reg-test", CHAMPION).version) == "2"
    assert mlflow.get_tracking_uri().startswith("sqlite:")


def two_versions(logged_model, name):
    _, run_id, info, sha = logged_model
    # MLflow resolves models:/ sources with its global tracking URI: point it at this module's store again
    # (a test in between used a store of its own)
    client = mlflow_client()
    v1, _ = register_version(client, name, info.model_uri, info.model_id, run_id, {SHA_TAG: sha})
    run2 = client.create_run(client.get_experiment_by_name("reg-test").experiment_id)
    v2, _ = register_version(client, name, info.model_uri, info.model_id, run2.info.run_id, {SHA_TAG: sha})
    return client, str(v1.version), str(v2.version)


def test_the_ledger_keeps_100_moves_intact_and_in_order(logged_model):
    """Unbounded: every move is one file of the ledger run, none trimmed (the old tag held about 30)."""
    client, v1, v2 = two_versions(logged_model, "ledger-100")
    versions = [v1, v2] * 50
    for i, version in enumerate(versions):
        move_alias(client, "ledger-100", CHAMPION, version, reason=f"move {i}: " + "why " * 20)
    log = alias_log(client, "ledger-100")
    assert len(log) == 100
    assert [e["reason"].split(":")[0] for e in log] == [f"move {i}" for i in range(100)]
    assert [e["version"] for e in log] == versions
    assert [e["previous"] for e in log] == [None, *versions[:-1]]
    assert all(e["alias"] == CHAMPION and e["kind"] == "promote" and e["by"].startswith("cli:") for e in log)
    ledger_run = client.get_registered_model("ledger-100").tags[LEDGER_POINTER_TAG]
    assert len(client.list_artifacts(ledger_run, "alias_moves")) == 100
    assert rollback_target(client, "ledger-100") == (v2, v1)


def test_moves_recorded_in_the_old_capped_tag_are_still_read(logged_model):
    client, v1, v2 = two_versions(logged_model, "ledger-legacy")
    old = [{"alias": CHAMPION, "version": v1, "previous": None, "by": "cli:old", "reason": "bootstrap",
            "at": "2025-01-01T00:00:00+00:00", "kind": "promote"}]
    client.set_registered_model_tag("ledger-legacy", ALIAS_LOG_TAG, json.dumps(old))
    client.set_registered_model_alias("ledger-legacy", CHAMPION, v1)
    move_alias(client, "ledger-legacy", CHAMPION, v2, reason="drift")
    assert [(e["version"], e["by"]) for e in alias_log(client, "ledger-legacy")][0] == (v1, "cli:old")
    assert [e["version"] for e in alias_log(client, "ledger-legacy")] == [v1, v2]
    assert rollback_target(client, "ledger-legacy") == (v2, v1)


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


def test_rollback_to_an_explicit_version_refuses_the_champion_and_unknown_versions(logged_model):
    """Checked before anything is deployed: the errors name the version and what is registered."""
    from ml.config import parse_config
    from ml.errors import StateError
    from ml.pipeline import rollback

    client, v1, v2 = two_versions(logged_model, "reg-rollback")
    move_alias(client, "reg-rollback", CHAMPION, v2, reason="bootstrap")
    config = parse_config({"name": "reg-rollback", "target": "y", "positive_class": 1,
                           "features": {"numeric": ["a"]}, "data": {"reference": "r.csv"}})
    with pytest.raises(StateError, match=f"v{v2} is already the champion of 'reg-rollback'"):
        rollback(config, "test", version=v2)
    with pytest.raises(StateError, match=f"'reg-rollback' has no version 9 \\(registered: {v1}, {v2}\\)"):
        rollback(config, "test", version="9")
    assert str(version_by_alias(client, "reg-rollback", CHAMPION).version) == v2

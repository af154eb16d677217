"""The model server's MLflow login can read the registry and cannot write to it, on a REAL tracking server.

`mlflow server --app-name basic-auth` (SQLite stores in a temp folder, proxied artifacts, 127.0.0.1 on a
free port, `default_permission = NO_PERMISSIONS` as in docker/mlflow/basic_auth.ini) is started once for
the module. The reader is made exactly as compose's `mlflow-init` job and `make stack` make it
(`stack.mlflow_access.ensure_model_reader`); the admin then registers a version the way the pipeline
does (a logged ONNX model with its sha256 tag, alias `champion`). With the reader's credentials the
serving code path (`version_by_alias`, `fetch_onnx`: sha256-verified download) works, and every write
the pipeline makes is refused with 403 PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.mlflow_access import AccessError, config_model_names, ensure_model_reader, reader_from_environ
from stack.native import mlflow_auth_ini
from tests.conftest import REPO
from tests.mlflow_server import mlflow_server

ADMIN, ADMIN_PW = "admin", "admin-" + os.urandom(8).hex()
READER, READER_PW = "ct-serving", "reader-" + os.urandom(8).hex()
MODEL = "perm-model"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    # The product's auth config, plus MLflow's credential cache: without it every request pays a PBKDF2 check
    # (seconds each on a loaded 2-core machine). One worker, so a password change invalidates it at once.
    (root / "basic_auth.ini").write_text(mlflow_auth_ini(f"sqlite:///{root / 'auth.db'}", ADMIN)
                                         + "auth_cache_ttl_seconds = 600\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PW, "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex()}
    with mlflow_server(root, "--app-name", "basic-auth", "--serve-artifacts", env=env) as url:
        yield url


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch, server: str, ct_home: Path):
    """Switch the MLflow client credentials (the environment, as the serving container gets them)."""
    import mlflow

    def switch(username: str, password: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        mlflow.set_tracking_uri(server)

    yield switch
    mlflow.set_tracking_uri(None)


def _onnx_bytes() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _register_champion(name: str) -> tuple[str, str]:
    """As the admin (the trainer's login): log an ONNX model, register it with its sha256, alias champion."""
    import mlflow
    import mlflow.onnx
    import onnx

    from ml.registry import SHA_TAG, register_version
    from ml.tracking import get_or_create_experiment, mlflow_client

    client = mlflow_client()
    data = _onnx_bytes()
    run = client.create_run(get_or_create_experiment(client, name))
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.onnx.log_model(onnx.load_model_from_string(data), name="model")
    sha = hashlib.sha256(data).hexdigest()
    version, _ = register_version(client, name, info.model_uri, info.model_id, run.info.run_id, {SHA_TAG: sha})
    client.set_registered_model_alias(name, "champion", version.version)
    return str(version.version), run.info.run_id


def _denied(call) -> str:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as caught:
        call()
    message = str(caught.value)
    assert "403" in message or "PERMISSION_DENIED" in str(caught.value.error_code), message
    return message


def test_the_serving_login_reads_the_champion_and_cannot_write(server, as_user, tmp_path):
    from ml.registry import fetch_onnx, version_by_alias
    from ml.tracking import mlflow_client

    grant = ensure_model_reader(server, ADMIN, ADMIN_PW, READER, READER_PW, [MODEL])
    assert grant.models == (MODEL,) and set(grant.experiments) == {MODEL}
    as_user(ADMIN, ADMIN_PW)
    version, run_id = _register_champion(MODEL)

    as_user(READER, READER_PW)
    reader = mlflow_client()
    # what the model server does (ml/serving/model.py): resolve the alias, download, verify the sha256
    champion = version_by_alias(reader, MODEL, "champion")
    assert champion is not None and str(champion.version) == version
    path, sha = fetch_onnx(reader, MODEL, version, tmp_path / "cache")
    assert path.read_bytes() == _onnx_bytes() and sha == hashlib.sha256(_onnx_bytes()).hexdigest()

    # every write the pipeline makes is refused
    source = reader.get_model_version(MODEL, version).source
    _denied(lambda: reader.create_model_version(MODEL, source=source, run_id=run_id))
    _denied(lambda: reader.set_registered_model_alias(MODEL, "champion", version))
    _denied(lambda: reader.delete_registered_model_alias(MODEL, "champion"))
    _denied(lambda: reader.set_model_version_tag(MODEL, version, "ct.onnx_sha256", "0" * 64))
    _denied(lambda: reader.set_registered_model_tag(MODEL, "ct.alias_ledger_run", "x"))
    _denied(lambda: reader.create_run(grant.experiments[MODEL]))
    _denied(lambda: reader.log_metric(run_id, "auc", 1.0))
    # ... also at the HTTP boundary, as any client would see it
    response = httpx.post(f"{server}/api/2.0/mlflow/registered-models/alias", auth=(READER, READER_PW),
                          json={"name": MODEL, "alias": "champion", "version": version}, timeout=10)
    assert response.status_code == 403
    # the alias did not move and the admin (trainer) still writes
    as_user(ADMIN, ADMIN_PW)
    assert str(mlflow_client().get_model_version_by_alias(MODEL, "champion").version) == version


def test_setup_is_idempotent_rotates_the_password_and_lowers_stronger_grants(server, as_user):
    from mlflow.server.auth.client import AuthServiceClient

    ensure_model_reader(server, ADMIN, ADMIN_PW, READER, READER_PW, [MODEL, "second-model"])
    as_user(ADMIN, ADMIN_PW)
    auth = AuthServiceClient(server)
    auth.revoke_user_permission(READER, "registered_model", MODEL)
    auth.grant_user_permission(READER, "registered_model", MODEL, "EDIT")  # someone widened it by hand
    rotated = READER_PW + "-rotated"
    ensure_model_reader(server, ADMIN, ADMIN_PW, READER, rotated, [MODEL, "second-model"])
    assert auth.get_user_permission(READER, "registered_model", MODEL).permission == "READ"
    assert auth.get_user_permission(READER, "registered_model", "second-model").permission == "READ"
    assert auth.get_user(READER).is_admin is False
    old = httpx.get(f"{server}/api/2.0/mlflow/registered-models/get", params={"name": MODEL},
                    auth=(READER, READER_PW), timeout=10)
    new = httpx.get(f"{server}/api/2.0/mlflow/registered-models/get", params={"name": MODEL},
                    auth=(READER, rotated), timeout=10)
    assert old.status_code == 401 and new.status_code == 200
    # a model the reader was never granted stays invisible
    as_user(ADMIN, ADMIN_PW)
    from ml.registry import ensure_registered_model
    from ml.tracking import mlflow_client

    ensure_registered_model(mlflow_client(), "private-model")
    hidden = httpx.get(f"{server}/api/2.0/mlflow/registered-models/get", params={"name": "private-model"},
                       auth=(READER, rotated), timeout=10)
    assert hidden.status_code == 403


def test_bad_requests_are_refused_before_touching_the_server(server):
    with pytest.raises(AccessError, match="not 'admin'"):
        ensure_model_reader(server, ADMIN, ADMIN_PW, ADMIN, READER_PW, [MODEL])
    with pytest.raises(AccessError, match="shorter than 12"):
        ensure_model_reader(server, ADMIN, ADMIN_PW, READER, "short", [MODEL])
    with pytest.raises(AccessError, match="no model"):
        ensure_model_reader(server, ADMIN, ADMIN_PW, READER, READER_PW, [])
    with pytest.raises(AccessError, match="failed: .*401|failed: .*[Uu]nauthori"):
        ensure_model_reader(server, ADMIN, "wrong-password-123", READER, READER_PW, [MODEL])
    with pytest.raises(AccessError, match="MLFLOW_SERVING_PASSWORD"):
        reader_from_environ({"MLFLOW_TRACKING_URI": server, "MLFLOW_TRACKING_USERNAME": ADMIN,
                             "MLFLOW_TRACKING_PASSWORD": ADMIN_PW}, REPO / "configs")


def test_an_admin_login_is_never_made_the_reader(server, as_user):
    from mlflow.server.auth.client import AuthServiceClient

    as_user(ADMIN, ADMIN_PW)
    auth = AuthServiceClient(server)
    auth.create_user("second-admin", READER_PW)
    auth.update_user_admin("second-admin", True)
    with pytest.raises(AccessError, match="is an admin"):
        ensure_model_reader(server, ADMIN, ADMIN_PW, "second-admin", READER_PW, [MODEL])


def test_mlflow_init_grants_every_config_and_the_served_model(server, as_user):
    grant = reader_from_environ({"MLFLOW_TRACKING_URI": server, "MLFLOW_TRACKING_USERNAME": ADMIN,
                                 "MLFLOW_TRACKING_PASSWORD": ADMIN_PW, "MLFLOW_SERVING_PASSWORD": READER_PW,
                                 "CT_MODEL_NAME": "served-model"}, REPO / "configs")
    assert grant.username == READER
    assert set(grant.models) == {*config_model_names(REPO / "configs"), "served-model"}
    assert "employee-attrition" in grant.models


def test_make_stack_makes_the_same_login(server, as_user, tmp_path):
    """stack.native.start runs mlflow_init once MLflow answers: READ on every config of CT_CONFIG_DIR."""
    from mlflow.server.auth.client import AuthServiceClient

    from stack.native import StackConfig, generate_secrets, mlflow_init, mlflow_serving_env
    from tests.conftest import write_config

    folder = tmp_path / "configs"
    write_config(folder, name="native-model")
    port = int(server.rsplit(":", 1)[1])
    cfg = StackConfig(home=tmp_path, secrets=generate_secrets() | {"MLFLOW_ADMIN_PASSWORD": ADMIN_PW},
                      mlflow_port=port, mlflow_admin_user=ADMIN, serving_user="native-reader",
                      extra_env={"CT_CONFIG_DIR": str(folder)})
    mlflow_init(cfg)
    as_user(ADMIN, ADMIN_PW)
    assert AuthServiceClient(server).get_user_permission("native-reader", "registered_model",
                                                         "native-model").permission == "READ"
    env = mlflow_serving_env(cfg)
    assert env["MLFLOW_TRACKING_URI"] == server and env["MLFLOW_TRACKING_USERNAME"] == "native-reader"
    ok = httpx.get(f"{server}/api/2.0/mlflow/registered-models/get", params={"name": "native-model"},
                   auth=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]), timeout=10)
    assert ok.status_code == 200


def test_the_compose_job_command_makes_the_login(server, tmp_path):
    """`python -m stack mlflow-init` exactly as docker-compose.yaml's mlflow-init runs it (its environment)."""
    import json
    import subprocess
    import sys

    from tests.conftest import write_config

    folder = tmp_path / "configs"
    write_config(folder, name="compose-model")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "MLFLOW_TRACKING_USERNAME": ADMIN,
           "MLFLOW_TRACKING_PASSWORD": ADMIN_PW, "MLFLOW_SERVING_USER": "compose-reader",
           "MLFLOW_SERVING_PASSWORD": READER_PW, "CT_MODEL_NAME": "compose-served", "CT_CONFIG_DIR": str(folder),
           "CT_HOME": str(tmp_path / "ct")}
    done = subprocess.run([sys.executable, "-m", "stack", "mlflow-init"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) | {"experiments": None} == {
        "username": "compose-reader", "permission": "READ", "registered_models": ["compose-model", "compose-served"],
        "experiments": None}
    refused = subprocess.run([sys.executable, "-m", "stack", "mlflow-init"], capture_output=True, text=True,
                             env={**env, "MLFLOW_SERVING_USER": ADMIN}, cwd=REPO, timeout=300)
    assert refused.returncode == 1 and "the serving user must be its own login" in refused.stderr

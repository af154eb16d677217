"""The model server's own MLflow login: a non-admin user that may READ the models it serves, nothing else.

The tracking server runs MLflow's basic-auth app with `default_permission = NO_PERMISSIONS`
(docker/mlflow/basic_auth.ini), so a user sees only what it is granted. `ensure_model_reader` (the
compose job `mlflow-init`, `python -m stack mlflow-init`, and `make stack` at start-up) logs in as the
admin and, idempotently:

1. creates each model's registered model and experiment (named after the model, as the pipeline names
   them) if they do not exist yet, owned by the admin: nobody else can claim the name first;
2. creates the reader user, or resets its password to the given one (a rotated secret takes effect);
3. grants it READ on each registered model (versions, aliases, tags) and on each model's experiment
   (the logged model's artifacts live there: the ONNX file is downloaded through the artifact proxy);
   a stronger grant it held before is lowered to READ.

With READ the server resolves `models:/<name>@champion`, reads the version's sha256 tag and downloads
the file; creating a version, moving an alias, writing a tag or logging to a run is refused with 403
PERMISSION_DENIED (tests/stack/test_mlflow_access.py, against a real server). The reader is never an
admin: an admin user is refused, since admins bypass every permission.

MLflow's limit: without workspaces (MLFLOW_ENABLE_WORKSPACES) any authenticated user may create *new*
experiments and registered models of its own. It gains nothing on the models above (they exist and are
the admin's), which is why step 1 creates them up front.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.server.auth.client import AuthServiceClient

log = logging.getLogger(__name__)

READ = "READ"
#: The reader's default login name (MLFLOW_SERVING_USER).
SERVING_USER = "ct-serving"
#: MLflow's basic-auth app refuses shorter passwords.
MIN_PASSWORD_LENGTH = 12
_CLIENT_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


class AccessError(RuntimeError):
    """The reader cannot be set up as asked; the message names the setting or the server's answer."""


@dataclass(frozen=True)
class ReaderGrant:
    """What the reader may read: registered model names and experiment ids, READ on each."""

    username: str
    models: tuple[str, ...]
    experiments: Mapping[str, str]  # model name -> experiment id

    def to_dict(self) -> dict[str, object]:
        return {"username": self.username, "permission": READ, "registered_models": list(self.models),
                "experiments": dict(self.experiments)}


@contextmanager
def _client_env(tracking_uri: str, username: str, password: str) -> Iterator[None]:
    """MLflow's clients read their credentials from the environment only: set them for the block."""
    saved = {name: os.environ.get(name) for name in _CLIENT_ENV}
    os.environ.update(dict(zip(_CLIENT_ENV, (tracking_uri, username, password), strict=True)))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_request(admin_user: str, username: str, password: str, models: Sequence[str]) -> None:
    if not username or username == admin_user:
        raise AccessError(f"the serving user must be its own login, not {username or 'empty'!r} "
                          f"(the admin is {admin_user!r}): set MLFLOW_SERVING_USER")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccessError(f"MLFLOW_SERVING_PASSWORD is shorter than {MIN_PASSWORD_LENGTH} characters "
                          "(MLflow refuses it): python3 -m stack dotenv makes one")
    if not models:
        raise AccessError("no model to grant READ on: give model names or a config folder with *.yaml files")


def _ensure_user(auth: AuthServiceClient, username: str, password: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        user = auth.get_user(username)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
            raise
        auth.create_user(username, password)
        log.info("MLflow user %r created", username)
        return
    if user.is_admin:
        raise AccessError(f"MLflow user {username!r} is an admin (admins bypass every permission): "
                          "choose another MLFLOW_SERVING_USER or make it a regular user")
    auth.update_user_password(username, password)


def _grant_read(auth: AuthServiceClient, username: str, resource_type: str, resource_id: str) -> None:
    """READ exactly: nothing to do if held, a stronger direct grant is revoked first."""
    current = auth.get_user_permission(username, resource_type, resource_id).permission
    if current == READ:
        return
    if current not in ("NO_PERMISSIONS", ""):
        auth.revoke_user_permission(username, resource_type, resource_id)
        log.warning("MLflow user %r held %s on %s %s: lowered to READ", username, current, resource_type,
                    resource_id)
    auth.grant_user_permission(username, resource_type, resource_id, READ)


def ensure_model_reader(tracking_uri: str, admin_user: str, admin_password: str, username: str, password: str,
                        models: Sequence[str]) -> ReaderGrant:
    """Create or update `username` with READ on the registered model and the experiment of each model
    (see the module docstring); returns what it may read. Idempotent: run it at every start-up."""
    _check_request(admin_user, username, password, models)
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    from ml.registry import ensure_registered_model
    from ml.tracking import get_or_create_experiment, mlflow_client

    names = tuple(dict.fromkeys(models))
    try:
        with _client_env(tracking_uri, admin_user, admin_password):
            client = mlflow_client()
            experiments = {}
            for name in names:
                ensure_registered_model(client, name)
                experiments[name] = get_or_create_experiment(client, name)
            auth = AuthServiceClient(tracking_uri)
            _ensure_user(auth, username, password)
            for name in names:
                _grant_read(auth, username, "registered_model", name)
                _grant_read(auth, username, "experiment", experiments[name])
    except MlflowException as exc:
        raise AccessError(f"setting up MLflow user {username!r} on {tracking_uri} as {admin_user!r} failed: "
                          f"{' '.join(str(exc).split())[:300]}") from None
    grant = ReaderGrant(username=username, models=names, experiments=experiments)
    log.info("MLflow user %r may READ %s", username, grant.to_dict())
    return grant


def config_model_names(folder: Path) -> list[str]:
    """The model names of the configs in `folder` (as the DAG files read them); a config that does not load
    is skipped with a warning (Airflow reports it as an import error)."""
    from ml.config import load_config
    from ml.errors import ConfigError

    names = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            names.append(load_config(path).name)
        except ConfigError as exc:
            log.warning("skipping %s: %s", path, exc)
    return names


def reader_from_environ(environ: Mapping[str, str], config_folder: Path) -> ReaderGrant:
    """`python -m stack mlflow-init`: the reader of MLFLOW_SERVING_USER / MLFLOW_SERVING_PASSWORD on
    MLFLOW_TRACKING_URI, set up with the admin's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, for
    every model config in `config_folder` plus CT_MODEL_NAME (the model the serving container serves)."""
    missing = [name for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                                 "MLFLOW_SERVING_PASSWORD") if not environ.get(name)]
    if missing:
        raise AccessError(f"mlflow-init needs {', '.join(missing)} (see .env.example)")
    models = config_model_names(config_folder)
    if environ.get("CT_MODEL_NAME"):
        models.append(environ["CT_MODEL_NAME"])
    return ensure_model_reader(environ["MLFLOW_TRACKING_URI"], environ["MLFLOW_TRACKING_USERNAME"],
                               environ["MLFLOW_TRACKING_PASSWORD"], environ.get("MLFLOW_SERVING_USER") or SERVING_USER,
                               environ["MLFLOW_SERVING_PASSWORD"], models)

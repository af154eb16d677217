"""MLflow plumbing: where the store is, one MLflow run per pipeline run, and the run's step state.

A pipeline run is identified by its *run key* (the Airflow dag_run_id, or one the CLI makes up).
`open_run` finds the MLflow run tagged with that key or creates it, so re-running a DAG run resumes
the same MLflow run instead of starting a second one. Each step stores its JSON result as the
artifact `steps/<step>.json` of that run: steps executed elsewhere (a Kubernetes pod, a Databricks
job) hand their results to the next step through MLflow, not through a shared disk.

Where: MLFLOW_TRACKING_URI when set; otherwise a SQLite store under $CT_HOME/mlflow (CT_HOME
defaults to ./.ct).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import StateError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ml.config import ModelConfig

log = logging.getLogger(__name__)

# Progress bars of artifact downloads would flood task logs and CLI stderr.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

RUN_KEY_TAG = "ct.run_key"
RUN_KEY_HASH_TAG = "ct.run_key_sha"


def ct_home() -> Path:
    """Root of local state (MLflow store, run folders, local serving); $CT_HOME or ./.ct."""
    return Path(os.environ.get("CT_HOME", ".ct")).resolve()


def _is_local_default() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri() -> str:
    if not _is_local_default():
        return os.environ["MLFLOW_TRACKING_URI"]
    store = ct_home() / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def mlflow_client() -> MlflowClient:
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    # The fluent API (mlflow.start_run, log_model) needs the globals; but set_tracking_uri/set_registry_uri
    # also export MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI, which would make every later call in this
    # process (and every child process) ignore CT_HOME. Keep the environment as the user set it.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_key_hash(run_key: str) -> str:
    return hashlib.sha256(run_key.encode()).hexdigest()[:32]


def safe_name(text: str) -> str:
    """A file-system-safe rendering of a run key (Airflow run ids hold ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120] + "-" + run_key_hash(text)[:8]


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (ct_home() / "mlflow" / "artifacts").as_uri() if _is_local_default() else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another task
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def download_run_artifact(run_id: str, artifact_path: str, dest: Path) -> Path:
    """Copy one artifact file of an MLflow run to the file path `dest`; returns `dest`."""
    import mlflow

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fetched = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp,
                                                      tracking_uri=tracking_uri())
        shutil.move(fetched, dest)
    return dest


@dataclass
class RunContext:
    """Everything a step needs to find its run: config, run key, MLflow run, local work folder."""

    config: ModelConfig
    run_key: str
    mlflow_run_id: str
    experiment_id: str

    @cached_property
    def client(self) -> MlflowClient:
        return mlflow_client()

    @property
    def work_dir(self) -> Path:
        path = ct_home() / "runs" / self.config.name / safe_name(self.run_key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save(self, step: str, result: dict[str, Any]) -> None:
        """Store a step's result in the MLflow run (and a local copy for people to read)."""
        self.client.log_dict(self.mlflow_run_id, result, f"steps/{step}.json")
        local = self.work_dir / "steps" / f"{step}.json"
        local.parent.mkdir(exist_ok=True)
        local.write_text(json.dumps(result, indent=2, default=str))

    def load(self, step: str) -> dict[str, Any] | None:
        """A step's stored result, or None when that step has not stored one in this run."""
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=self.mlflow_run_id, artifact_path=f"steps/{step}.json", dst_path=tmp,
                    tracking_uri=tracking_uri())
            except Exception:  # MLflow raises OSError/MlflowException variants for "not there"
                return None
            return json.loads(Path(path).read_text())

    def require(self, step: str) -> dict[str, Any]:
        result = self.load(step)
        if result is None:
            raise StateError(f"run {self.run_key!r} has no result of step '{step}': run that step first "
                             f"(same --run-key), or start the whole pipeline with `python -m ml run`")
        return result

    def artifact(self, artifact_path: str) -> Path:
        """This run's artifact as a local file: the copy this machine wrote, else (the step that wrote it
        ran in a pod or a Databricks job) fetched from MLflow into the same place."""
        local = self.work_dir / artifact_path
        if not local.exists():
            download_run_artifact(self.mlflow_run_id, artifact_path, local)
        return local

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.mlflow_run_id, str(path), artifact_path)


def open_run(config: ModelConfig, run_key: str, tags: dict[str, str] | None = None) -> RunContext:
    """The MLflow run of this pipeline run: found by run key, created on first use."""
    client = mlflow_client()
    experiment_id = get_or_create_experiment(client, config.name)
    key_hash = run_key_hash(run_key)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_HASH_TAG}` = '{key_hash}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
        if tags:
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
    else:
        run = client.create_run(experiment_id, run_name=run_key[:250],
                                tags={RUN_KEY_TAG: run_key[:5000], RUN_KEY_HASH_TAG: key_hash, **(tags or {})})
        run_id = run.info.run_id
        log.info("MLflow run %s created for run key %s (store %s)", run_id, run_key, tracking_uri())
    ctx = RunContext(config=config, run_key=run_key, mlflow_run_id=run_id, experiment_id=experiment_id)
    ctx.__dict__["client"] = client
    return ctx

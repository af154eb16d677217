"""MLflow plumbing: where the store is, one MLflow run per pipeline run, and the run's step state.

A pipeline run is identified by its *run key* (the Airflow dag_run_id, or one the CLI makes up).
`open_run` finds the MLflow run tagged with that key or creates it, so re-running a DAG run resumes
the same MLflow run instead of starting a second one. Each step stores its record (ml.state) as the
artifact `steps/<step>.json` of that run: steps executed elsewhere (a Kubernetes pod, a Databricks
job) hand their results to the next step through MLflow, not through a shared disk.
`RunContext.load_state` reads all of them at once; a step reads the state once and passes it down.

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
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import StateError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ml.config import ModelConfig
    from ml.state import RunState, StepRecord

log = logging.getLogger(__name__)

# Progress bars of artifact downloads would flood task logs and CLI stderr.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

RUN_KEY_TAG = "ct.run_key"
RUN_KEY_HASH_TAG = "ct.run_key_sha"
STEPS_FOLDER = "steps"


@cache
def code_version() -> str:
    """The code that ran: $CT_CODE_VERSION, else the git commit of this checkout, else 'unknown'."""
    if os.environ.get("CT_CODE_VERSION"):
        return os.environ["CT_CODE_VERSION"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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

    def save_record(self, record: StepRecord) -> None:
        """Store a step's record in the MLflow run (and a local copy for people to read)."""
        document = record.to_dict()
        self.client.log_dict(self.mlflow_run_id, document, f"{STEPS_FOLDER}/{record.step.value}.json")
        local = self.work_dir / STEPS_FOLDER / f"{record.step.value}.json"
        local.parent.mkdir(exist_ok=True)
        local.write_text(json.dumps(document, indent=2, default=str))

    def load_step_documents(self) -> dict[str, dict[str, Any]]:
        """Every step record stored in the run as JSON, by step name: one listing, one folder download."""
        import mlflow

        if not self.client.list_artifacts(self.mlflow_run_id, STEPS_FOLDER):
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(mlflow.artifacts.download_artifacts(
                run_id=self.mlflow_run_id, artifact_path=STEPS_FOLDER, dst_path=tmp, tracking_uri=tracking_uri()))
            return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}

    def load_state(self) -> RunState:
        """The run state (ml.state) from every stored step record, read once."""
        from ml.state import RunState

        return RunState.from_documents(self.run_key, self.load_step_documents())

    def artifact(self, artifact_path: str) -> Path:
        """This run's artifact as a local file: the copy this machine wrote, else (the step that wrote it
        ran in a pod or a Databricks job) fetched from MLflow into the same place."""
        local = self.work_dir / artifact_path
        if not local.exists():
            download_run_artifact(self.mlflow_run_id, artifact_path, local)
        return local

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.mlflow_run_id, str(path), artifact_path)

    def log_onnx_model(self, data: bytes, *, estimator: str, params: dict[str, Any], train_rows: int,
                       eval_rows: int, eval_source: str, metrics: dict[str, float]) -> Any:
        """Log the challenger's ONNX file as the run's MLflow model (with its estimator, parameters and
        holdout metrics); returns MLflow's ModelInfo (model_id, model_uri)."""
        import mlflow
        import mlflow.onnx
        import onnx
        import onnxruntime

        with mlflow.start_run(run_id=self.mlflow_run_id):
            info = mlflow.onnx.log_model(onnx.load_model_from_string(data), name="model", save_as_external_data=False,
                                         pip_requirements=[f"onnxruntime=={onnxruntime.__version__}"],
                                         metadata={"estimator": estimator},
                                         params={"estimator": estimator,
                                                 **{f"param.{k}": str(v) for k, v in params.items()}})
            mlflow.log_params({"estimator": estimator, "train_rows": train_rows, "eval_rows": eval_rows,
                               "eval_source": eval_source})
            mlflow.log_metrics({f"challenger.{k}": v for k, v in metrics.items() if v == v})
        return info


def download_model(model_uri: str, dest: Path) -> Path:
    """The single .onnx file of a logged model, copied to `dest`/model.onnx."""
    import mlflow

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = list(Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp)).rglob("*.onnx"))
        if len(files) != 1:
            raise StateError(f"{model_uri}: expected one .onnx file, found {len(files)}")
        shutil.copyfile(files[0], dest / "model.onnx")
    return dest / "model.onnx"


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

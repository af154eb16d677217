"""MLflow plumbing: where the store is, one MLflow run per pipeline run, and the run's step state.

A pipeline run is identified by its *run key* (the Airflow dag_run_id, or one the CLI makes up).
`open_run` finds the MLflow run tagged with that key or creates it, so re-running a DAG run resumes
the same MLflow run instead of starting a second one. Each step stores its record (ml.state) as the
artifact `steps/<step>.json` of that run: steps executed elsewhere (a Kubernetes pod, a Databricks
job) hand their results to the next step through MLflow, not through a shared disk.
`RunState.load(ctx)` (ml.state) reads all of them at once; a step reads the state once and passes it down.

Where: MLFLOW_TRACKING_URI when set; otherwise a SQLite store under $CT_HOME/mlflow (CT_HOME
defaults to ./.ct).

MLflow's own conventions are followed where they exist: the run carries `mlflow.source.git.commit`
and its description (`mlflow.note.content`); the logged model a signature, an input example and the
config file; the data windows are `mlflow.log_input` datasets whose digest is the window's sha256.
Links into the MLflow UI (`run_url`, `artifact_url`, `model_version_url`) start at $CT_MLFLOW_UI_URL,
else the tracking server, else http://127.0.0.1:5000 (`mlflow ui`).
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import StateError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from ml.config import ModelConfig
    from ml.state import StepRecord

log = logging.getLogger(__name__)

# Progress bars of artifact downloads would flood task logs and CLI stderr. (MLflow's "View run ... at: <url>"
# lines are kept: the CLI sends everything printed during a command to stderr, ml.cli._json_stdout.)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

#: The MLflow client's HTTP retries and timeouts, set here once (the environment overrides each). MLflow's
#: defaults (7 retries, backoff factor 2, 120 s timeout) let a step wait over 9 minutes for a dead tracking
#: server; these fail a request within ~4 s when the server is gone (connection refused) and ~35 s when it
#: hangs (3 tries x 10 s), so a step fails in under a minute naming the step and the server.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
for _key, _value in MLFLOW_HTTP_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

#: the step in progress and the process running it (JSON), "" when none: a run killed mid-step keeps it
STEP_RUNNING_TAG = "ct.step.running"
#: `host:pid:start` of the process that runs the whole run (`python -m ml run`, a rollback), if one does
OWNER_TAG = "ct.owner"
RUN_KEY_TAG = "ct.run_key"
RUN_KEY_HASH_TAG = "ct.run_key_sha"
STEPS_FOLDER = "steps"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
DESCRIPTION_TAG = "mlflow.note.content"
#: MLflow's dataset digest column holds 36 characters: the first 36 hex digits of the sha256 (the full
#: sha256 is the input's `ct.sha256` tag).
DIGEST_LENGTH = 36


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


@cache
def git_commit() -> str | None:
    """The full git commit of this checkout (MLflow's `mlflow.source.git.commit`); outside a checkout (an
    image) $CT_CODE_VERSION, else None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CT_CODE_VERSION") or None


def ui_url() -> str:
    """Where people open the MLflow UI: $CT_MLFLOW_UI_URL, else an http(s) tracking server, else `mlflow ui`."""
    uri = os.environ.get("CT_MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI") or ""
    return (uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000").rstrip("/")


def run_url(experiment_id: str, run_id: str) -> str:
    return f"{ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def artifact_url(run_id: str, path: str) -> str:
    """The raw artifact file (an HTML report opens as itself), served by the tracking server."""
    from urllib.parse import urlencode

    return f"{ui_url()}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}"


def model_version_url(name: str, version: str) -> str:
    from urllib.parse import quote

    return f"{ui_url()}/#/models/{quote(name)}/versions/{version}"


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
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    from ml import startup

    startup.end()  # MLflow and its store are imported: a CLI process's start-up is over (ml.startup)
    return client


class TrackingUnavailable(StateError):
    """The MLflow tracking server did not answer (down, unreachable, hanging): the message names the step."""

    retryable = True


def is_tracking_failure(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is the tracking server not answering, rather than a refusal."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TrackingUnavailable | requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        text = str(seen)
        if "API request to" in text and ("Max retries exceeded" in text or "timed out" in text.lower()):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def tracking_unavailable(what: str, exc: BaseException) -> TrackingUnavailable:
    """The error of `what` (e.g. "step train") failing because the tracking server did not answer."""
    detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return TrackingUnavailable(f"{what} failed: the MLflow tracking server {tracking_uri()} did not answer "
                               f"(MLFLOW_HTTP_REQUEST_MAX_RETRIES={os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES']}, "
                               f"MLFLOW_HTTP_REQUEST_TIMEOUT={os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT']} s): {detail}")


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

    def mark_step(self, step: str) -> None:
        """Say in the run which step this process is running (cleared by `clear_step`): a run whose process
        is killed mid-step keeps the mark, and its run record names the step (ml.record.finish_run)."""
        from datetime import UTC, datetime

        from ml.procs import owner_tag

        mark = {"step": step, "owner": owner_tag(), "at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.client.set_tag(self.mlflow_run_id, STEP_RUNNING_TAG, json.dumps(mark))

    def clear_step(self) -> None:
        self.client.set_tag(self.mlflow_run_id, STEP_RUNNING_TAG, "")

    def running_step(self) -> dict[str, str] | None:
        """The mark of a step that started and did not finish (see `mark_step`), None when there is none."""
        tag = self.client.get_run(self.mlflow_run_id).data.tags.get(STEP_RUNNING_TAG)
        try:
            return json.loads(tag) if tag else None
        except ValueError:
            return None

    def load_step_documents(self) -> dict[str, dict[str, Any]]:
        """Every step record stored in the run as JSON, by step name: one listing, one folder download."""
        import mlflow

        if not self.client.list_artifacts(self.mlflow_run_id, STEPS_FOLDER):
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(mlflow.artifacts.download_artifacts(
                run_id=self.mlflow_run_id, artifact_path=STEPS_FOLDER, dst_path=tmp, tracking_uri=tracking_uri()))
            return {path.stem: json.loads(path.read_text()) for path in folder.glob("*.json")}

    def artifact(self, artifact_path: str) -> Path:
        """This run's artifact as a local file: the copy this machine wrote, else (the step that wrote it
        ran in a pod or a Databricks job) fetched from MLflow into the same place."""
        local = self.work_dir / artifact_path
        if not local.exists():
            download_run_artifact(self.mlflow_run_id, artifact_path, local)
        return local

    @contextmanager
    def fluent(self) -> Iterator[None]:
        """This run as MLflow's active run, for the fluent API (log_model, log_input). Leaving
        `mlflow.start_run` ends the run FINISHED; the run stays RUNNING until its record is written, so a
        process killed after this point leaves a RUNNING run that the next run closes (ml.record)."""
        import mlflow

        with mlflow.start_run(run_id=self.mlflow_run_id):
            yield
        self.client.update_run(self.mlflow_run_id, status="RUNNING")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.mlflow_run_id, str(path), artifact_path)

    def log_onnx_model(self, data: bytes, *, estimator: str, params: dict[str, Any], train_rows: int,
                       eval_rows: int, eval_source: str, metrics: dict[str, float],
                       example: pd.DataFrame | None = None, estimator_params: dict[str, Any] | None = None) -> Any:
        """Log the challenger's ONNX file as the run's MLflow model, with its signature and input example
        (`example`: a few canonical model-input rows), the config file and its sha256 (`extra_files/`), the
        estimator's effective parameters and the holdout metrics; returns MLflow's ModelInfo."""
        import mlflow
        import mlflow.onnx
        import onnx
        import onnxruntime

        feed, signature = onnx_example(data, example) if example is not None and len(example) else (None, None)
        with self.fluent(), tempfile.TemporaryDirectory() as tmp:
            info = mlflow.onnx.log_model(onnx.load_model_from_string(data), name="model", save_as_external_data=False,
                                         pip_requirements=[f"onnxruntime=={onnxruntime.__version__}"],
                                         onnx_execution_providers=["CPUExecutionProvider"],
                                         metadata={"estimator": estimator}, signature=signature, input_example=feed,
                                         extra_files=self._config_files(Path(tmp)) or None,
                                         params={"estimator": estimator,
                                                 **{f"param.{k}": str(v) for k, v in params.items()}})
            mlflow.log_params({"estimator": estimator, "train_rows": train_rows, "eval_rows": eval_rows,
                               "eval_source": eval_source,
                               **{f"estimator.{k}": _param(v) for k, v in (estimator_params or {}).items()}})
            mlflow.log_metrics({f"challenger.{k}": v for k, v in metrics.items() if v == v})
        return info

    def _config_files(self, folder: Path) -> list[str]:
        """The config file this run read and a file holding its sha256, for the version's artifacts."""
        from ml.config import config_sha256

        source = Path(self.config.source) if self.config.source else None
        if source is None or not source.is_file():
            return []
        config = folder / source.name
        shutil.copyfile(source, config)
        digest = folder / f"{source.name}.sha256"
        digest.write_text(f"{config_sha256(source)}  {source.name}\n")
        return [str(config), str(digest)]

    def window_inputs(self, windows: list[tuple[str, pd.DataFrame, str | None, str | None]]) -> list[Any]:
        """The data the challenger learns from as MLflow dataset inputs (context `training`), described (schema,
        rows) but not logged yet, so the frames can go before the fit: (name, frame, path, sha256) each; the
        digest is the sha256's first 36 hex digits."""
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = []
        for name, frame, path, sha in windows:
            digest = sha[:DIGEST_LENGTH] if sha else None
            dataset = mlflow.data.from_pandas(frame, source=path or name, name=f"{self.config.name}.{name}",
                                              targets=self.config.target if self.config.target in frame else None,
                                              digest=digest)
            dataset.schema = window_schema(frame)  # a cached_property: what MLflow would infer, vectorised
            entity = Dataset(**{k: v for k, v in dataset.to_dict().items()
                                if k in ("name", "digest", "source_type", "source", "schema", "profile")})
            tags = [InputTag("ct.window", name), InputTag("ct.sha256", sha or ""),
                    InputTag(MLFLOW_DATASET_CONTEXT, "training")]
            inputs.append(DatasetInput(dataset=entity, tags=tags))
        return inputs

    def log_window_inputs(self, inputs: list[Any], model_id: str | None = None) -> None:
        """Log `window_inputs` to the run, linked to the logged model."""
        from mlflow.entities import LoggedModelInput

        self.client.log_inputs(self.mlflow_run_id, datasets=inputs,
                               models=[LoggedModelInput(model_id)] if model_id else None)

    def describe(self, markdown: str) -> None:
        """The run's description in the MLflow UI (`mlflow.note.content`)."""
        self.client.set_tag(self.mlflow_run_id, DESCRIPTION_TAG, markdown[:4900])


def window_schema(frame: pd.DataFrame) -> Any:
    """The schema `mlflow.data.from_pandas` infers for a frame (each column's type and `required`: no value
    missing), without MLflow's Python call per value (22 s for two million-row windows): a typed column's type
    comes from its dtype and `required` from its null mask; an object column is inferred by MLflow from its
    distinct values, which give the same type and the same `required`. None where MLflow infers none."""
    import warnings

    from mlflow.types import ColSpec, Schema
    from mlflow.types.utils import _infer_schema

    specs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hint about integer columns, once per column
        try:
            for name in frame.columns:
                column = frame[name]
                if column.dtype.kind == "O":
                    specs.extend(_infer_schema(_distinct(column).to_frame()).inputs)
                else:
                    spec = _infer_schema(column.head(1).to_frame()).inputs[0]
                    specs.append(ColSpec(type=spec.type, name=spec.name, required=not column.isna().any()))
        except Exception:  # as PandasDataset.schema: a frame MLflow cannot describe has no schema
            return None
    return Schema(specs)


def _distinct(column: pd.Series) -> pd.Series:
    """One value of each distinct (type, value): 1, 1.0 and True are equal but not of one type."""
    import pandas as pd

    try:
        return column[~pd.DataFrame({"type": column.map(type), "value": column}).duplicated().to_numpy()]
    except TypeError:  # unhashable values (lists): every value
        return column


def _param(value: Any) -> str:
    return str(value)[:500]  # MLflow's limit for a param value is 6000; keep the run page readable


def onnx_example(data: bytes, example: pd.DataFrame) -> tuple[dict[str, Any], Any]:
    """(input example, signature) as the ONNX graph takes them: one [n, 1] tensor per input (float32 numerics,
    string categoricals, under the graph's input names), and the probability tensor these rows give. In this
    form MLflow's own pyfunc (`mlflow models serve`) accepts the example too."""
    import numpy as np
    from mlflow.models import infer_signature

    from ml.export import OnnxModel

    model = OnnxModel.from_bytes(data)
    feed = {model.renamed.get(c, c): example[c].to_numpy(dtype=np.float32).reshape(-1, 1) for c in model.numeric}
    feed |= {model.renamed.get(c, c): example[c].to_numpy(dtype=object).astype(str).reshape(-1, 1)
             for c in model.categorical}
    return feed, infer_signature(feed, model.predict_proba(example))


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
        commit = git_commit()
        run = client.create_run(experiment_id, run_name=run_key[:250],
                                tags={RUN_KEY_TAG: run_key[:5000], RUN_KEY_HASH_TAG: key_hash,
                                      **({GIT_COMMIT_TAG: commit} if commit else {}), **(tags or {})})
        run_id = run.info.run_id
        log.info("MLflow run %s created for run key %s (store %s)", run_id, run_key, tracking_uri())
    ctx = RunContext(config=config, run_key=run_key, mlflow_run_id=run_id, experiment_id=experiment_id)
    ctx.__dict__["client"] = client
    return ctx

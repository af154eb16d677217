"""The `databricks` training backend: `python -m ml train` as a one-off Databricks job run.

`DatabricksTrainOperator` submits (api/2.2/jobs/runs/submit, through the provider's
DatabricksSubmitRunOperator and the connection `training.databricks.connection_id`, default
`databricks_default`) one task on a new job cluster:

- `python_wheel_task` running the project wheel's `ct-ml` entry point (the same `python -m ml` CLI)
  with `train --config <training.databricks.config_path> --run-key <Airflow run id>`; a wheel, not a
  repo checkout, so the job runs exactly the code that was built and pinned (docs/databricks.md);
- `new_cluster` from `training.databricks` (spark_version, node_type_id, num_workers; 0 = single node);
- `spark_env_vars`: MLFLOW_TRACKING_URI (and any other `env_secrets`) as `{{secrets/scope/key}}`
  references that Databricks resolves on the cluster: the secret never passes through Airflow; and
  CT_CONFIG_SHA256, the sha256 of the config Airflow read, so the job refuses a different file on the
  cluster (ml.cli.check_config_digest), as the pods' config guard does.

`submit_run_payload` is the pure function that builds the request (tests assert it and round-trip it
through databricks-sdk). The submit operator is built at run time: the config is read at run time, DAG
params must not be injected into the wheel's named_parameters, and the `{{secrets/...}}` references
must not meet Jinja. `ct_airflow.remote.RemoteStepOperator` runs it and forwards its deferral re-entry and
`on_kill` (which cancels the run); the step's result comes back through the MLflow run state, as for the
Kubernetes pods.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ct_airflow.remote import RemoteStepOperator

if TYPE_CHECKING:
    from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator
    from airflow.sdk import Context

    from ml.config import ModelConfig

TASK_KEY = "train"


def submit_run_payload(config: ModelConfig, *, run_key: str, reference_path: str | None = None,
                       current_path: str | None = None, idempotency_token: str | None = None,
                       config_sha256: str | None = None) -> dict[str, Any]:
    """The runs/submit request that trains `config`'s challenger for `run_key` on a job cluster.

    `config_sha256` (of the file Airflow read) makes the job refuse a config file on the cluster that differs.
    """
    from ml.cli import step_argv
    from ml.errors import ConfigError

    db = config.training.databricks
    missing = [key for key, value in (("wheel", db.wheel), ("config_path", db.config_path)) if not value]
    if missing:
        raise ConfigError(", ".join(f"training.databricks.{key}" for key in missing)
                          + ": required for training.backend databricks (see docs/databricks.md)")
    env = {"CT_HOME": "/tmp/ct", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "PYTHONUNBUFFERED": "1"}
    if config_sha256:
        env["CT_CONFIG_SHA256"] = config_sha256
    env |= {name: "{{secrets/" + ref + "}}" for name, ref in db.env_secrets.items()}
    cluster: dict[str, Any] = {
        "spark_version": db.spark_version,
        "node_type_id": db.node_type_id,
        "num_workers": db.num_workers,
        "spark_env_vars": env,
        "custom_tags": {"ct-model": config.name},
    }
    if db.num_workers == 0:  # Databricks' single-node cluster: the driver does the (scikit-learn) work
        cluster["spark_conf"] = {"spark.databricks.cluster.profile": "singleNode", "spark.master": "local[*]"}
        cluster["custom_tags"]["ResourceClass"] = "SingleNode"
    if db.policy_id:
        cluster["policy_id"] = db.policy_id
        cluster["apply_policy_default_values"] = True
    libraries: list[dict[str, Any]] = [{"requirements": db.requirements}] if db.requirements else []
    libraries.append({"whl": db.wheel})
    task = {
        "task_key": TASK_KEY,
        "description": f"python -m ml train for model {config.name}",
        "new_cluster": cluster,
        "python_wheel_task": {
            "package_name": db.package_name,
            "entry_point": db.entry_point,
            "parameters": step_argv("train", db.config_path, run_key, reference_path, current_path),
        },
        "libraries": libraries,
        "timeout_seconds": db.timeout_s,
    }
    payload: dict[str, Any] = {"run_name": f"ct-train {config.name} {run_key}", "timeout_seconds": db.timeout_s,
                               "tasks": [task]}
    if idempotency_token:
        payload["idempotency_token"] = idempotency_token
    return payload


def idempotency_token(dag_id: str, run_key: str, task_id: str, try_number: int) -> str:
    """One Databricks run per task try: a re-sent submit of the same try returns the same run, while a
    retry after a failed run submits a new one (64 hex characters, the API's limit)."""
    return hashlib.sha256(f"{dag_id}|{run_key}|{task_id}|{try_number}".encode()).hexdigest()


class DatabricksTrainOperator(RemoteStepOperator):
    """Train the challenger as a Databricks job run (backend `databricks`, config `training.databricks`).

    :param polling_period_seconds: seconds between run-state polls
    """

    step = "train"
    ui_color = "#1CB1C2"
    ui_fgcolor = "#fff"

    def __init__(self, *, polling_period_seconds: int = 30, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.polling_period_seconds = polling_period_seconds

    def inner_operator(self, context: Context) -> DatabricksSubmitRunOperator:
        from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

        from ml.config import config_sha256, load_config

        config = load_config(self.config_path)
        token = idempotency_token(self.dag_id, self.run_key, self.task_id, context["ti"].try_number)
        payload = submit_run_payload(config, run_key=self.run_key, reference_path=self.reference_path or None,
                                     current_path=self.current_path or None, idempotency_token=token,
                                     config_sha256=config_sha256(self.config_path))
        return DatabricksSubmitRunOperator(
            task_id=self.task_id, json=payload, databricks_conn_id=config.training.databricks.connection_id,
            polling_period_seconds=self.polling_period_seconds, wait_for_termination=True,
            deferrable=self.deferrable_mode())

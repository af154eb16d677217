"""The pipeline's operators: one per step, all built on `PipelineStepOperator`.

    ValidateDataOperator -> DriftCheckOperator / PerformanceCheckOperator -> DecideBranchOperator
    -> TrainOperator -> GatesOperator -> RegisterOperator -> DeployLocalOperator -> PromoteOperator
    -> RunRecordOperator (trigger_rule=all_done: every run ends with a record)

Nothing here touches MLflow, files or the network at DAG-parse time: `__init__` only assigns, and
`ml` is imported inside `execute`. Errors of the `ml.errors.CTError` family become
`AirflowFailException` (no retry: bad data or a failed gate stays bad) unless they are marked
retryable (registry races), which then go through the task's normal retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseBranchOperator, BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ml.tracking import RunContext

#: Keys of a step result worth showing in XCom (the full result is in the MLflow run state).
_SUMMARY_KEYS = {
    "validate": ("passed", "problems", "warnings", "rows", "reference_sha256", "current_sha256"),
    "drift": ("dataset_drift", "drifted_share", "drift_share_threshold", "report_path", "skipped"),
    "performance": ("champion_version", "metric", "on_reference", "on_current", "decayed", "detail"),
    "train": ("model_id", "model_uri", "onnx_sha256", "estimator", "train_rows", "eval_rows", "eval_source",
              "metrics"),
    "gates": ("passed", "failed", "champion_version"),
    "register": ("version", "created"),
    "deploy": ("target", "version", "previous_version", "status", "rolled_back", "url", "detail"),
    "promote": ("version", "previous", "promoted"),
}


class _PipelineMixin:
    """Shared plumbing: render params into a config and find this run's MLflow run."""

    config_path: str
    reference_path: str | None
    current_path: str | None
    run_key: str

    def _context(self) -> RunContext:
        from ml.config import load_config
        from ml.tracking import open_run

        config = load_config(self.config_path).with_data(self.reference_path or None, self.current_path or None)
        return open_run(config, self.run_key)

    @staticmethod
    def _fail(exc: Exception) -> None:
        from ml.errors import CTError

        if isinstance(exc, CTError) and not exc.retryable:
            raise AirflowFailException(str(exc)) from exc
        raise exc


class PipelineStepOperator(_PipelineMixin, BaseOperator):
    """Run one step of `ml.pipeline` for the model config and run key given.

    :param config_path: path of the model config YAML (templated)
    :param reference_path: reference window overriding the config's, empty for none (templated)
    :param current_path: current window overriding the config's, empty for none (templated)
    :param run_key: identifies the pipeline run; default the Airflow run id (templated)
    """

    step: str = ""
    template_fields: Sequence[str] = ("config_path", "reference_path", "current_path", "run_key")
    ui_color = "#e8f4ea"

    def __init__(self, *, config_path: str, reference_path: str | None = None, current_path: str | None = None,
                 run_key: str = "{{ run_id }}", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.reference_path = reference_path
        self.current_path = current_path
        self.run_key = run_key

    def step_kwargs(self, context: Context) -> dict[str, Any]:
        return {}

    def execute(self, context: Context) -> dict[str, Any]:
        from ml.pipeline import execute

        try:
            ctx = self._context()
            result = execute(self.step, ctx, **self.step_kwargs(context))
        except Exception as exc:
            self._fail(exc)
            raise
        summary = {k: result[k] for k in _SUMMARY_KEYS.get(self.step, ()) if k in result}
        self.log.info("%s: %s", self.step, summary)
        return {"run_key": self.run_key, "mlflow_run_id": ctx.mlflow_run_id, **summary}


class ValidateDataOperator(PipelineStepOperator):
    """Read the windows and check the data contract; fails closed naming every violation."""

    step = "validate"

    def step_kwargs(self, context: Context) -> dict[str, Any]:
        return {"dag_id": self.dag_id, "dag_run_id": context["run_id"]}


class DriftCheckOperator(PipelineStepOperator):
    """Evidently drift report (per column + dataset share), HTML report logged to MLflow."""

    step = "drift"


class PerformanceCheckOperator(PipelineStepOperator):
    """The champion's metric on the labelled current rows vs its holdout metric."""

    step = "performance"


class TrainOperator(PipelineStepOperator):
    """Fit the challenger in the worker and log its ONNX model to the run (backend `local`)."""

    step = "train"
    ui_color = "#fff3d6"


class GatesOperator(PipelineStepOperator):
    """Evaluate every validation gate; fails (no retry) naming the gates that rejected the challenger."""

    step = "gates"


class RegisterOperator(PipelineStepOperator):
    """Register the gated challenger once per run; set the `challenger` alias."""

    step = "register"


class DeployLocalOperator(PipelineStepOperator):
    """Serve the registered version on 127.0.0.1, smoke-test it, roll back on failure."""

    step = "deploy"
    ui_color = "#dde8fb"


class PromoteOperator(PipelineStepOperator):
    """Move `champion` to the version now serving (recorded in the alias audit log)."""

    step = "promote"


class DecideBranchOperator(_PipelineMixin, BaseBranchOperator):
    """Decide retrain / skip and follow the matching branch.

    :param config_path: path of the model config YAML (templated)
    :param reference_path: reference window override (templated)
    :param current_path: current window override (templated)
    :param run_key: the pipeline run (templated)
    :param force_retrain: retrain whatever the checks say (templated; render as a native bool)
    :param retrain_task_id: the task to follow on `retrain`
    :param skip_task_id: the task to follow on `skip`
    """

    template_fields: Sequence[str] = ("config_path", "reference_path", "current_path", "run_key", "force_retrain")
    ui_color = "#f6e3f3"

    def __init__(self, *, config_path: str, retrain_task_id: str, skip_task_id: str,
                 reference_path: str | None = None, current_path: str | None = None, run_key: str = "{{ run_id }}",
                 force_retrain: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.reference_path = reference_path
        self.current_path = current_path
        self.run_key = run_key
        self.force_retrain = force_retrain
        self.retrain_task_id = retrain_task_id
        self.skip_task_id = skip_task_id

    def choose_branch(self, context: Context) -> str:
        from ml.pipeline import execute

        force = self.force_retrain
        if isinstance(force, str):  # rendered without native types: "True"/"False"
            force = force.strip().lower() in ("true", "1", "yes")
        try:
            result = execute("decide", self._context(), force_retrain=bool(force))
        except Exception as exc:
            self._fail(exc)
            raise
        self.log.info("decision: %s: %s", result["decision"], result["reason"])
        context["ti"].xcom_push(key="decision", value={k: result[k] for k in ("decision", "reason", "triggers")})
        return self.retrain_task_id if result["decision"] == "retrain" else self.skip_task_id


class RunRecordOperator(_PipelineMixin, BaseOperator):
    """Write the run record (MLflow artifact, task log, XCom) and fail the DAG run if the run failed.

    Runs whatever happened upstream (trigger_rule all_done), so blocked and rejected runs get their
    record too.

    :param config_path: path of the model config YAML (templated)
    :param reference_path: reference window override (templated)
    :param current_path: current window override (templated)
    :param run_key: the pipeline run (templated)
    """

    template_fields: Sequence[str] = ("config_path", "reference_path", "current_path", "run_key")
    ui_color = "#eeeeee"

    def __init__(self, *, config_path: str, reference_path: str | None = None, current_path: str | None = None,
                 run_key: str = "{{ run_id }}", **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)
        self.config_path = config_path
        self.reference_path = reference_path
        self.current_path = current_path
        self.run_key = run_key

    def execute(self, context: Context) -> dict[str, Any]:
        import json

        from ml.record import finish_run, outcome_message

        try:
            record = finish_run(self._context())
        except Exception as exc:
            self._fail(exc)
            raise
        self.log.info("run record:\n%s", json.dumps(record, indent=2, default=str))
        message = outcome_message(record)
        if message:
            # The record is the XCom of a successful task only; keep it reachable when failing.
            context["ti"].xcom_push(key="run_record", value=record)
            raise AirflowFailException(message)
        return record

"""The pipeline's operators: one per step, all built on `PipelineOperator`.

    ValidateDataOperator -> DriftCheckOperator / PerformanceCheckOperator -> DecideBranchOperator
                            DriftCheckOperator -> DriftReportOperator (beside the decision path)
    -> ConfigBranchOperator (training.backend) -> TrainOperator -> GatesOperator -> RegisterOperator
    -> [PromotionApprovalOperator (ct_airflow.approval)] -> ConfigBranchOperator (deploy.target)
    -> DeployLocalOperator -> PromoteOperator (emits the model Asset event)
    -> RunRecordOperator (trigger_rule=all_done: every run ends with a record; its note becomes the DAG run note)
    RollbackOperator: the rollback DAG's one task (ml.pipeline.rollback)

Every operator on a run shows extra links in the UI (ct_airflow.links): the MLflow run, and where it
applies the drift report or the model version.

Nothing here touches MLflow, files or the network at DAG-parse time: `__init__` only assigns, and
`ml` is imported inside `execute`. `fail_task` maps errors to Airflow's semantics in one place: the
`ml.errors.CTError` family becomes `AirflowFailException` (no retry: bad data or a failed gate stays
bad) unless it is retryable (registry races, unreachable servers), which goes through the task's retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, cast

from airflow.sdk import BaseBranchOperator, BaseOperator, TriggerRule
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from ct_airflow.links import (
    DRIFT_REPORT,
    MLFLOW_RUN,
    MODEL_VERSION,
    DriftReportLink,
    MlflowRunLink,
    ModelVersionLink,
    note_link,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ml.decision import Decision
    from ml.state import StepRecord
    from ml.tracking import RunContext

RUN_FIELDS = ("config_path", "reference_path", "current_path", "run_key")


def fail_task(exc: BaseException) -> NoReturn:
    """Raise `exc` the way Airflow should see it: a non-retryable project error fails the task for good; a
    challenger rejected while a healthy champion serves on skips the rest of the run (a correct outcome)."""
    from ml.errors import ChallengerRejected, CTError

    if isinstance(exc, ChallengerRejected):
        raise AirflowSkipException(str(exc)) from exc
    if isinstance(exc, CTError) and not exc.retryable:
        raise AirflowFailException(str(exc)) from exc
    raise exc


def runs_every_task_here() -> bool:
    """True under `dag.test()` / `airflow dags test`, which run every task of the DAG run in this process (the
    Task SDK's in-process supervisor); a scheduler's worker runs each task in a process of its own."""
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:
        return False
    return type(getattr(task_runner, "SUPERVISOR_COMMS", None)).__name__ == "InProcessSupervisorComms"


def step_summary(run_key: str, mlflow_run_id: str, record: StepRecord) -> dict[str, Any]:
    """What a step task returns to XCom: the run, and the step result's summary (the rest is in MLflow)."""
    summary = record.result.summary() if record.result is not None else {}
    return {"run_key": run_key, "mlflow_run_id": mlflow_run_id, **summary}


class PipelineOperator(BaseOperator):
    """Base of every operator that works on a run: the templated fields that name the model and the run.

    :param config_path: path of the model config YAML (templated)
    :param reference_path: reference window overriding the config's, empty for none (templated)
    :param current_path: current window overriding the config's, empty for none (templated)
    :param run_key: identifies the pipeline run; default the Airflow run id (templated)
    """

    template_fields: Sequence[str] = RUN_FIELDS
    operator_extra_links = (MlflowRunLink(),)

    def __init__(self, *, config_path: str, reference_path: str | None = None, current_path: str | None = None,
                 run_key: str = "{{ run_id }}", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.reference_path = reference_path
        self.current_path = current_path
        self.run_key = run_key

    def run_context(self) -> RunContext:
        """The run's MLflow context for the rendered fields (reads the config file); notes the run's link. The
        task's first imports of ml and MLflow run without the garbage collector's full passes (ml.startup): in
        a task process those would walk all of Airflow's objects again and again."""
        from ml import startup

        startup.begin()
        try:
            from ml.config import load_config
            from ml.tracking import open_run, run_url

            config = load_config(self.config_path).with_data(self.reference_path or None, self.current_path or None)
            ctx = open_run(config, self.run_key)
        finally:
            startup.end()
        note_link(self, MLFLOW_RUN, run_url(ctx.experiment_id, ctx.mlflow_run_id))
        return ctx


class StepOperator(PipelineOperator):
    """Run one step of the pipeline (`ml.pipeline.run_step`) in the worker."""

    step: ClassVar[str] = ""
    ui_color = "#e8f4ea"

    def step_kwargs(self, context: Context) -> dict[str, Any]:
        return {}

    def beside_step(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """More keyword arguments of the step, from helpers started before the run context opens (the drift
        step's Evidently process, which validate starts already where the DAG run is one process); none by
        default."""
        return contextlib.nullcontext({})

    def execute(self, context: Context) -> dict[str, Any]:
        from ml.pipeline import run_step

        try:
            with self.beside_step() as extra:
                ctx = self.run_context()
                record = run_step(self.step, ctx, **self.step_kwargs(context), **extra)
        except Exception as exc:
            fail_task(exc)
        summary = step_summary(self.run_key, ctx.mlflow_run_id, record)
        self.after_step(context, ctx, record)
        self.log.info("%s: %s", self.step, summary)
        return summary

    def after_step(self, context: Context, ctx: RunContext, record: StepRecord) -> None:
        """What the task adds once its step succeeded (links, Asset events); nothing by default."""


class ValidateDataOperator(StepOperator):
    """Read the windows and check the data contract; fails closed naming every violation."""

    step = "validate"

    def step_kwargs(self, context: Context) -> dict[str, Any]:
        dag_run = context.get("dag_run")
        run_after = getattr(dag_run, "run_after", None)  # a prediction-log window ends at the run's time
        return {"dag_id": self.dag_id, "dag_run_id": context["run_id"],
                "as_of": run_after.isoformat() if run_after is not None else None}

    def beside_step(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        if runs_every_task_here():  # this process runs the drift report task too: its Evidently imports from now on
            from ml.config import load_config
            from ml.drift.report_worker import start_early

            start_early(load_config(self.config_path))
        return super().beside_step()


class DriftCheckOperator(StepOperator):
    """Drift per column and for the dataset, on every row (the report is DriftReportOperator's)."""

    step = "drift"


class DriftReportOperator(StepOperator):
    """Evidently's HTML drift report, logged to MLflow; beside the decision path (nothing waits for it but the
    run record), so Evidently's import and rendering never delay a decision."""

    step = "drift_report"
    operator_extra_links = (MlflowRunLink(), DriftReportLink())

    def beside_step(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        from ml.config import load_config
        from ml.drift.report_worker import beside

        return beside(load_config(self.config_path))  # Evidently imports meanwhile (or did, since validate)

    def after_step(self, context: Context, ctx: RunContext, record: StepRecord) -> None:
        from ml.tracking import artifact_url

        if getattr(record.result, "report_path", None):
            note_link(self, DRIFT_REPORT, artifact_url(ctx.mlflow_run_id, "reports/drift_report.html"))


class PerformanceCheckOperator(StepOperator):
    """The champion's metric on the labelled current rows vs its holdout metric."""

    step = "performance"


class TrainOperator(StepOperator):
    """Fit the challenger in the worker and log its ONNX model to the run (backend `local`)."""

    step = "train"
    ui_color = "#fff3d6"


class GatesOperator(StepOperator):
    """Evaluate every validation gate; fails (no retry) naming the gates that rejected the challenger."""

    step = "gates"


def note_version_link(operator: Any, model: str, version: str | None) -> None:
    from ml.tracking import model_version_url

    if version:
        note_link(operator, MODEL_VERSION, model_version_url(model, version))


class RegisterOperator(StepOperator):
    """Register the gated challenger once per run; set the `challenger` alias."""

    step = "register"
    operator_extra_links = (MlflowRunLink(), ModelVersionLink())

    def after_step(self, context: Context, ctx: RunContext, record: StepRecord) -> None:
        note_version_link(self, ctx.config.name, getattr(record.result, "version", None))


class DeployLocalOperator(StepOperator):
    """Serve the registered version on 127.0.0.1, smoke-test it, roll back on failure."""

    step = "deploy"
    ui_color = "#dde8fb"


def emit_model_event(operator: BaseOperator, context: Context, promotion: Any, run_key: str) -> None:
    """Put the new champion (version, sha256, previous) in the extra of this task's outlet Asset events:
    downstream DAGs scheduled on the model Asset read it from their triggering event."""
    extra = {"version": promotion.version, "sha256": promotion.sha256, "previous": promotion.previous,
             "run_key": run_key, "kind": promotion.move.kind}
    for outlet in operator.outlets or []:
        context["outlet_events"][outlet].extra = extra


class PromoteOperator(StepOperator):
    """Move `champion` to the version now serving (recorded in the alias ledger); emits the model Asset
    event (its outlet) with the version and sha256."""

    step = "promote"
    operator_extra_links = (MlflowRunLink(), ModelVersionLink())

    def after_step(self, context: Context, ctx: RunContext, record: StepRecord) -> None:
        note_version_link(self, ctx.config.name, getattr(record.result, "version", None))
        emit_model_event(self, context, record.result, self.run_key)


def _native_bool(value: bool | str) -> bool:
    if isinstance(value, str):  # rendered without native types: "True"/"False"
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


class DecideBranchOperator(PipelineOperator, BaseBranchOperator):
    """Decide retrain / skip and follow the matching branch.

    :param force_retrain: retrain whatever the checks say (templated; render as a native bool)
    :param retrain_task_id: the task to follow on `retrain`
    :param skip_task_id: the task to follow on `skip`
    """

    template_fields: Sequence[str] = (*RUN_FIELDS, "force_retrain")
    ui_color = "#f6e3f3"

    def __init__(self, *, retrain_task_id: str, skip_task_id: str, force_retrain: bool | str = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force_retrain = force_retrain
        self.retrain_task_id = retrain_task_id
        self.skip_task_id = skip_task_id

    def choose_branch(self, context: Context) -> str:
        from ml.pipeline import run_step

        try:
            record = run_step("decide", self.run_context(), force_retrain=_native_bool(self.force_retrain))
        except Exception as exc:
            fail_task(exc)
        decision = cast("Decision", record.result)
        self.log.info("decision: %s: %s", decision.decision, decision.reason)
        context["ti"].xcom_push(key="decision", value=decision.summary())
        return self.retrain_task_id if decision.decision == "retrain" else self.skip_task_id


class ConfigBranchOperator(BaseBranchOperator):
    """Follow the task a model config setting names (`training.backend`, `deploy.target`), read at run time;
    a non-empty `override` (a DAG param) wins over the config.

    :param config_path: path of the model config YAML (templated)
    :param setting: dotted config key, e.g. ``training.backend``
    :param branches: setting value -> task id to follow
    :param override: value that replaces the config's, empty for none (templated)
    """

    template_fields: Sequence[str] = ("config_path", "override")
    ui_color = "#f6e3f3"

    def __init__(self, *, config_path: str, setting: str, branches: Mapping[str, str], override: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.setting = setting
        self.branches = branches
        self.override = override

    def choose_branch(self, context: Context) -> str:
        from ml.config import load_config
        from ml.errors import ConfigError

        try:
            value: Any = self.override or load_config(self.config_path)
            if not self.override:
                for part in self.setting.split("."):
                    value = getattr(value, part)
            if value not in self.branches:
                raise ConfigError(f"{self.setting}: {value!r} has no task here; choose one of {sorted(self.branches)}")
        except Exception as exc:
            fail_task(exc)
        self.log.info("%s = %s -> %s", self.setting, value, self.branches[value])
        return self.branches[value]


#: XCom key of the run's note (Markdown): ct_airflow.notes makes it the DAG run note when the run ends.
NOTE_KEY = "run_note"


class RunRecordOperator(PipelineOperator):
    """Write the run record (MLflow artifact, task log, XCom) and fail the DAG run if the run failed.

    Runs whatever happened upstream (trigger_rule all_done), so blocked and rejected runs get their
    record too. The decision and its reason (ml.explain.run_note) go to XCom `run_note`, which becomes
    the DAG run note.
    """

    ui_color = "#eeeeee"
    operator_extra_links = (MlflowRunLink(), ModelVersionLink())

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", TriggerRule.ALL_DONE)
        super().__init__(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        import json

        from ml.explain import run_note
        from ml.record import finish_run

        try:
            ctx = self.run_context()
            record = finish_run(ctx)
        except Exception as exc:
            fail_task(exc)
        document = record.to_dict()
        context["ti"].xcom_push(key=NOTE_KEY, value=run_note(record))
        note_version_link(self, record.model, record.champion_version)
        self.log.info("run record:\n%s", json.dumps(document, indent=2, default=str))
        if record.notify:
            self._notify(ctx.config.notify.connection_id, document, context)
        message = record.failure()
        if message:
            # The record is the XCom of a successful task only; keep it reachable when failing.
            context["ti"].xcom_push(key="run_record", value=document)
            raise AirflowFailException(message)
        return document

    def _notify(self, connection_id: str | None, document: dict[str, Any], context: Context) -> None:
        """Send the outcome (notify.connection_id); a notification that fails is logged, never the run's cause."""
        from ct_airflow.notify import RunRecordNotifier

        if not connection_id:
            self.log.warning("needs a human (set notify.connection_id to send it): %s", document["notify"])
            return
        try:
            RunRecordNotifier(connection_id=connection_id, record=document).notify(context)
        except Exception:
            self.log.exception("could not notify %s", connection_id)

class RollbackOperator(PipelineOperator):
    """The rollback DAG's task: serve `version` (empty = the version the champion replaced), smoke-tested, and
    move `champion` to it, recorded as a run of its own (ml.pipeline.rollback); emits the model Asset event.

    :param version: the registered version to return to; empty for the previous champion (templated)
    :param reason: recorded in the alias ledger and the run record (templated)
    """

    template_fields: Sequence[str] = (*RUN_FIELDS, "version", "reason")
    ui_color = "#fbe3d6"
    operator_extra_links = (MlflowRunLink(), ModelVersionLink())

    def __init__(self, *, version: str | None = None, reason: str = "rollback", **kwargs: Any) -> None:
        kwargs.setdefault("run_key", "rollback-{{ run_id }}")  # never the key of a retraining run of the model
        super().__init__(**kwargs)
        self.version = version
        self.reason = reason

    def execute(self, context: Context) -> dict[str, Any]:
        from ml.config import load_config
        from ml.explain import run_note
        from ml.pipeline import rollback
        from ml.tracking import open_run, run_url

        try:
            config = load_config(self.config_path)
            version = str(self.version).strip() if self.version not in (None, "", "None") else None
            record, promotion = rollback(config, str(self.reason or "rollback"), version=version,
                                         run_key=self.run_key)
        except Exception as exc:
            fail_task(exc)
        ctx = open_run(config, record.run_key)
        context["ti"].xcom_push(key=NOTE_KEY, value=run_note(record))
        note_link(self, MLFLOW_RUN, run_url(ctx.experiment_id, ctx.mlflow_run_id))
        note_version_link(self, config.name, promotion.version)
        emit_model_event(self, context, promotion, self.run_key)
        self.log.info("champion of %s: v%s -> v%s (%s)", config.name, promotion.previous, promotion.version,
                      promotion.move.reason)
        return {"run_key": record.run_key, "status": record.status, "champion": promotion.version,
                "rolled_back_from": promotion.previous, "deployment": record.deployment}

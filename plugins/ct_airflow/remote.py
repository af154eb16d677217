"""Steps that run elsewhere: the one base of the `kubernetes` and `databricks` backends.

A remote step is the provider's own operator (KubernetesPodOperator, DatabricksSubmitRunOperator) built
at run time from the model config, running `python -m ml <step>` (ml.cli.step_argv) in a pod or a job
run. `RemoteStepOperator` runs that inner operator, forwards its deferral re-entry (whatever method it
deferred to) and `on_kill`, and then reads the step's record of this attempt from the run's MLflow state:
results travel through MLflow, not through XCom sidecars or a shared disk. A backend supplies only
`inner_operator(context)`.

Failures: when the remote step itself failed (its record holds the error, or an outcome that stops the
run, such as a rolled-back deploy), the task fails the way it would have in the worker (`ml.state.step_error`:
no retry unless the error is retryable). When the remote side failed before the step could store anything
(pod eviction, image pull, API trouble), the original error goes to the task's retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ct_airflow.operators import PipelineOperator, fail_task, step_summary

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from ml.state import StepRecord


def default_deferrable() -> bool:
    """`[operators] default_deferrable`, read at run time."""
    from airflow.sdk.configuration import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


class RemoteStepOperator(PipelineOperator):
    """Run one pipeline step through another system's operator; the result comes back through MLflow.

    :param deferrable: wait in the triggerer; None = `[operators] default_deferrable`
    """

    step: ClassVar[str] = ""

    def __init__(self, *, deferrable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self._inner: BaseOperator | None = None

    def deferrable_mode(self) -> bool:
        """Whether the inner operator waits in the triggerer (this operator's setting, else Airflow's default)."""
        return default_deferrable() if self.deferrable is None else bool(self.deferrable)

    def inner_operator(self, context: Context) -> BaseOperator:
        """The provider operator that runs the step for the rendered fields (reads the config file)."""
        raise NotImplementedError

    def _build(self, context: Context) -> BaseOperator:
        try:
            self._inner = self.inner_operator(context)
        except Exception as exc:
            fail_task(exc)
        return self._inner

    def execute(self, context: Context) -> dict[str, Any]:
        inner = self._build(context)
        try:
            inner.execute(context)  # deferrable: raises TaskDeferred (a BaseException), resumed below
        except Exception as exc:
            self._remote_failed(exc)
        return self._summary()

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after the trigger fired: the inner operator takes its own event (logs, clean-up, errors)."""
        inner = self._build(context)
        try:
            inner.resume_execution(next_method, next_kwargs, context)
        except Exception as exc:
            self._remote_failed(exc)
        return self._summary()

    def on_kill(self) -> None:
        if self._inner is not None:
            self._inner.on_kill()

    def _record(self) -> tuple[str, StepRecord | None]:
        from ml.state import RunState, Step

        ctx = self.run_context()
        return ctx.mlflow_run_id, RunState.load(ctx).record(Step(self.step))

    def _summary(self) -> dict[str, Any]:
        mlflow_run_id, record = self._record()
        if record is None or record.failed:
            raise AirflowException(
                f"the remote '{self.step}' finished but run {self.run_key!r} holds no '{self.step}' result of this "
                "attempt in MLflow: does the remote side use the same MLFLOW_TRACKING_URI as Airflow?")
        summary = step_summary(self.run_key, mlflow_run_id, record)
        self.log.info("%s: %s", self.step, summary)
        return summary

    def _remote_failed(self, exc: BaseException) -> NoReturn:
        from ml.state import step_error

        try:
            _, record = self._record()
        except Exception:  # MLflow unreachable: nothing to learn, keep the original failure
            self.log.warning("could not read the '%s' result from MLflow", self.step, exc_info=True)
            raise exc from None
        error = step_error(record) if record is not None else None
        if error is None or error.retryable:
            raise exc
        message = f"{self.step} failed: {error}" if record is not None and record.failed else str(error)
        raise AirflowFailException(message) from exc

"""The one base of the remote backends: it runs the provider's operator, forwards its deferral re-entry and
on_kill, and maps the step record it finds in MLflow to Airflow's failure semantics."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from ct_airflow.remote import RemoteStepOperator
from ml.deploy import DeployResult
from ml.errors import RegistryError, TrainingError
from ml.state import Step, StepError, StepRecord
from tests.ml.test_state import EXAMPLES


class Inner(BaseOperator):
    """Stands in for KubernetesPodOperator / DatabricksSubmitRunOperator: defers, then resumes."""

    def __init__(self, *, behaviour: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.behaviour = behaviour

    def execute(self, context: Any) -> None:
        if self.behaviour.get("defer"):
            raise TaskDeferred(trigger=None, method_name="pod_done", kwargs={"pod": "p-1"})
        if "fail" in self.behaviour:
            raise self.behaviour["fail"]

    def pod_done(self, context: Any, event: dict[str, Any], pod: str) -> None:
        self.behaviour["resumed"] = (event, pod)
        if event.get("status") == "error":
            raise AirflowException("pod failed")

    def on_kill(self) -> None:
        self.behaviour["killed"] = True


class Remote(RemoteStepOperator):
    step = "train"

    def __init__(self, *, behaviour: dict[str, Any], record: StepRecord | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.behaviour = behaviour
        self.record = record

    def inner_operator(self, context: Any) -> BaseOperator:
        return Inner(task_id=self.task_id, behaviour=self.behaviour)

    def _record(self) -> tuple[str, StepRecord | None]:  # what MLflow holds for this attempt
        return "mlflow-run", self.record


def remote(record: StepRecord | None, **behaviour: Any) -> Remote:
    return Remote(task_id="train_remote", config_path="c.yaml", behaviour=behaviour, record=record)


TRAINED = StepRecord(Step.TRAIN, "a", result=EXAMPLES[Step.TRAIN])


def test_deferral_is_forwarded_to_the_inner_operator_and_the_result_read_from_mlflow():
    op = remote(TRAINED, defer=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute({})
    assert deferred.value.method_name == "pod_done"  # the inner operator's own re-entry point
    summary = op.resume_execution(deferred.value.method_name, {**deferred.value.kwargs, "event": {"status": "ok"}},
                                  {})
    assert op.behaviour["resumed"] == ({"status": "ok"}, "p-1")
    assert summary == {"run_key": "{{ run_id }}", "mlflow_run_id": "mlflow-run", **EXAMPLES[Step.TRAIN].summary()}
    op.on_kill()
    assert op.behaviour["killed"] is True


def test_a_step_that_failed_remotely_fails_the_task_without_retry():
    failed = StepRecord(Step.TRAIN, "a", error=StepError.of(TrainingError("single class of 'y'")))
    with pytest.raises(AirflowFailException, match="train failed: single class of 'y'"):
        remote(failed, fail=AirflowException("pod returned a failure")).execute({})
    op = remote(failed, defer=True)
    with pytest.raises(AirflowFailException, match="single class"):
        op.resume_execution("pod_done", {"pod": "p", "event": {"status": "error"}}, {})


def test_an_outcome_that_stops_the_run_fails_the_task_with_its_message():
    rolled_back = DeployResult("kubernetes", "2", "1", "rolled_back", True, None, "smoke test failed")
    record = StepRecord(Step.DEPLOY, "a", result=rolled_back)
    with pytest.raises(AirflowFailException, match="deploy rolled_back: smoke test failed"):
        remote(record, fail=AirflowException("pod returned a failure")).execute({})


def test_failures_before_the_step_or_retryable_ones_go_to_the_retries():
    original = AirflowException("image pull back-off")
    with pytest.raises(AirflowException) as raised:
        remote(None, fail=original).execute({})
    assert raised.value is original
    busy = StepRecord(Step.TRAIN, "a", error=StepError.of(RegistryError("registry busy")))
    with pytest.raises(AirflowException) as raised:
        remote(busy, fail=original).execute({})
    assert raised.value is original and not isinstance(raised.value, AirflowFailException)


def test_a_remote_that_stored_nothing_is_named():
    with pytest.raises(AirflowException, match="holds no 'train' result of this attempt"):
        remote(None).execute({})

"""Operators: assignment-only constructors, templated fields named like their parameters, errors
mapped to Airflow failures (no retry for bad input, retry for retryable ones)."""

from __future__ import annotations

import inspect

import pytest
from airflow.sdk.exceptions import AirflowFailException

from ct_airflow import operators as ops
from ml.errors import ContractError, RegistryError

STEP_OPERATORS = [ops.ValidateDataOperator, ops.DriftCheckOperator, ops.PerformanceCheckOperator,
                  ops.TrainOperator, ops.GatesOperator, ops.RegisterOperator, ops.DeployLocalOperator,
                  ops.PromoteOperator]


@pytest.mark.parametrize("cls", [*STEP_OPERATORS, ops.DecideBranchOperator, ops.RunRecordOperator])
def test_template_fields_are_constructor_parameters_kept_verbatim(cls):
    params = inspect.signature(cls.__init__).parameters
    kwargs = {"task_id": "t", "config_path": "{{ params.config }}", "retrain_task_id": "a", "skip_task_id": "b"}
    kwargs = {k: v for k, v in kwargs.items() if k in params or k == "task_id"}
    op = cls(**kwargs)
    for field in cls.template_fields:
        assert field in params, f"{cls.__name__}.{field} is not a constructor parameter"
    assert op.config_path == "{{ params.config }}"  # not rendered or transformed in __init__
    assert op.run_key == "{{ run_id }}"


def test_each_step_operator_runs_a_distinct_step():
    steps = [cls.step for cls in STEP_OPERATORS]
    assert len(set(steps)) == len(steps) and all(steps)
    from ml.pipeline import STEP_FUNCTIONS

    assert set(steps) <= set(STEP_FUNCTIONS)


def test_record_operator_runs_whatever_happened_upstream():
    from airflow.sdk import TriggerRule

    assert ops.RunRecordOperator(task_id="r", config_path="c").trigger_rule == TriggerRule.ALL_DONE


def test_errors_map_to_airflow_semantics():
    with pytest.raises(AirflowFailException, match="column 'x' missing"):
        ops._PipelineMixin._fail(ContractError("column 'x' missing"))
    with pytest.raises(RegistryError):  # retryable: left to the task's retries
        ops._PipelineMixin._fail(RegistryError("registry busy"))
    with pytest.raises(ValueError):
        ops._PipelineMixin._fail(ValueError("bug"))


def test_force_retrain_accepts_rendered_strings(monkeypatch, tmp_path):
    seen = {}

    def fake_execute(step, ctx, **kwargs):
        seen.update(kwargs)
        return {"decision": "retrain", "reason": "r", "triggers": ["forced"]}

    monkeypatch.setattr("ml.pipeline.execute", fake_execute)
    op = ops.DecideBranchOperator(task_id="d", config_path="c", retrain_task_id="retrain.train",
                                  skip_task_id="skip", force_retrain="True")
    monkeypatch.setattr(op, "_context", lambda: None)

    class TI:
        def xcom_push(self, key, value):
            seen["xcom"] = value

    assert op.choose_branch({"ti": TI()}) == "retrain.train"
    assert seen["force_retrain"] is True and seen["xcom"]["decision"] == "retrain"

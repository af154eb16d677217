"""Operators: assignment-only constructors, templated fields named like their parameters, errors
mapped to Airflow failures (no retry for bad input, retry for retryable ones), config-driven branches."""

from __future__ import annotations

import inspect

import pytest
from airflow.sdk.exceptions import AirflowFailException

from ct_airflow import operators as ops
from ml.errors import ContractError, RegistryError

STEP_OPERATORS = [ops.ValidateDataOperator, ops.DriftCheckOperator, ops.PerformanceCheckOperator,
                  ops.TrainOperator, ops.GatesOperator, ops.RegisterOperator, ops.DeployLocalOperator,
                  ops.PromoteOperator]


def constructor_parameters(cls: type) -> set[str]:
    """Keyword parameters of every __init__ along the class's MRO (each passes **kwargs on)."""
    return {name for base in cls.__mro__ if "__init__" in vars(base)
            for name in inspect.signature(base.__init__).parameters}


@pytest.mark.parametrize("cls", [*STEP_OPERATORS, ops.DecideBranchOperator, ops.RunRecordOperator])
def test_template_fields_are_constructor_parameters_kept_verbatim(cls):
    params = constructor_parameters(cls)
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
        ops.fail_task(ContractError("column 'x' missing"))
    with pytest.raises(RegistryError):  # retryable: left to the task's retries
        ops.fail_task(RegistryError("registry busy"))
    with pytest.raises(ValueError):
        ops.fail_task(ValueError("bug"))


def test_force_retrain_accepts_rendered_strings(monkeypatch, tmp_path):
    from ml.decision import Decision
    from ml.state import Step, StepRecord

    seen = {}

    def fake_run_step(step, ctx, **kwargs):
        seen.update(kwargs)
        return StepRecord(Step.DECIDE, "a", result=Decision("retrain", "r", ["forced"]))

    monkeypatch.setattr("ml.pipeline.run_step", fake_run_step)
    op = ops.DecideBranchOperator(task_id="d", config_path="c", retrain_task_id="retrain.train",
                                  skip_task_id="skip", force_retrain="True")
    monkeypatch.setattr(op, "run_context", lambda: None)

    class TI:
        def xcom_push(self, key, value):
            seen["xcom"] = value

    assert op.choose_branch({"ti": TI()}) == "retrain.train"
    assert seen["force_retrain"] is True and seen["xcom"]["decision"] == "retrain"


def test_config_branches_follow_the_setting_and_an_override(tmp_path):
    from tests.conftest import write_config

    path = str(write_config(tmp_path, training={"backend": "kubernetes"}))
    branches = {"local": "train_local", "kubernetes": "train_k8s", "databricks": "train_db"}

    def branch(override):
        return ops.ConfigBranchOperator(task_id="b", config_path=path, setting="training.backend",
                                        branches=branches, override=override).choose_branch({})

    assert branch(None) == branch("") == "train_k8s"  # the config's training.backend
    assert branch("databricks") == "train_db"  # the DAG param wins
    with pytest.raises(AirflowFailException, match=r"training.backend: 'spark' has no task here"):
        branch("spark")
    with pytest.raises(AirflowFailException, match="not found"):
        ops.ConfigBranchOperator(task_id="b", config_path=str(tmp_path / "missing.yaml"), setting="deploy.target",
                                 branches={"local": "d"}).choose_branch({})


def test_runs_every_task_here_under_dag_test_and_not_outside_a_task(airflow_db, tmp_path):
    """`dag.test()` runs its tasks in this process (the validate task then starts the drift report's Evidently
    process early, ml.drift.report_worker.start_early); outside a task it is False."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    answer = tmp_path / "answer.txt"
    (tmp_path / "probe_dag.py").write_text(f"""
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import DAG, task

with DAG("ct-in-process-probe", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
    @task
    def probe() -> None:
        from ct_airflow.operators import runs_every_task_here

        Path({str(answer)!r}).write_text(str(runs_every_task_here()))

    probe()
""")
    bag = DagBag(dag_folder=str(tmp_path))
    assert not bag.import_errors, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)  # dag.test() runs DAGs its bundles know
    bag.get_dag("ct-in-process-probe").test()
    assert answer.read_text() == "True"
    assert ops.runs_every_task_here() is False

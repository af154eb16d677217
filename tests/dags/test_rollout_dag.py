"""The rollout DAG (`<name>.rollout`): only a model whose deploy.strategy is canary or shadow has one; it is
wired like the others (tags, retries, one active run, hourly) and a `dag.test()` run with nothing running is a
green no-op whose XCom says so."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.conftest import write_config
from tests.dags.test_dag_integrity import bag


def test_only_a_canary_or_shadow_model_has_a_rollout_dag_and_it_runs(tmp_path, airflow_db, ct_home, monkeypatch):
    folder = tmp_path / "configs"
    for stem, strategy in (("plain", "replace"), ("can", "canary")):
        write_config(folder / "tmp", name=stem, deploy={"strategy": strategy}).rename(folder / f"{stem}.yaml")
    dags = bag(folder, monkeypatch)
    assert not dags.import_errors, dags.import_errors
    assert set(dags.dag_ids) == {"plain.retrain", "plain.rollback", "plain.monitor", "can.retrain", "can.rollback",
                                 "can.monitor", "can.rollout"}
    dag = dags.get_dag("can.rollout")
    assert dag.max_active_runs == 1 and "model:can" in dag.tags and dag.timetable.expression == "0 * * * *"
    task = dag.get_task("check_rollout")
    assert task.retries == 1 and task.config_path == str(folder / "can.yaml")
    when = datetime(2026, 4, 1, tzinfo=UTC)
    dag_run = dag.test(logical_date=when, run_after=when)
    assert dag_run.state == "success"
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id="can.rollout", run_id=dag_run.run_id).one()
        assert ti.xcom_pull(task_ids="check_rollout", session=session) == {
            "model": "can", "kind": None, "detail": "no canary or shadow is running"}

"""The DAG run note: the outcome, the decision and its reason, where the Airflow UI shows a run's note.

Airflow 3.3 gives a task no way to set its DAG run's note (the Task SDK API for it comes in a later
release), so an Airflow listener does it where the run ends: the scheduler (or `dag.test()`) calls
`on_dag_run_success` / `on_dag_run_failed` with the run attached to its database session, and the note is
the `run_note` XCom the run's record-writing task pushed (ct_airflow.operators: RunRecordOperator in a
retraining run, RollbackOperator in a rollback run). A note
someone already wrote is never replaced; runs of other DAGs are not touched. Registered by the plugin
in plugins/ct_notes_plugin.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

if TYPE_CHECKING:
    from airflow.models.dagrun import DagRun

log = logging.getLogger(__name__)

NOTE_KEY = "run_note"  # ct_airflow.operators.NOTE_KEY (not imported: this runs in the scheduler)


def note_of(dag_run: DagRun, session: Any) -> str | None:
    """The run's `run_note` XCom, if one of its tasks pushed one."""
    from airflow.models.xcom import XComModel

    row = session.execute(XComModel.get_many(run_id=dag_run.run_id, key=NOTE_KEY, dag_ids=dag_run.dag_id,
                                             limit=1)).scalars().first()
    if row is None:
        return None
    value = XComModel.deserialize_value(row)
    return value if isinstance(value, str) and value else None


def set_note(dag_run: DagRun) -> None:
    """Write the note through the session the run is attached to (the scheduler's: committed with the run's
    new state); a detached run (`dag.test()` hands the listener one) gets a session of its own."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is not None:
        _write(dag_run, session)
        return
    with create_session() as own:
        stored = own.scalar(select(DagRun).where(DagRun.dag_id == dag_run.dag_id, DagRun.run_id == dag_run.run_id))
        if stored is not None:
            _write(stored, own)


def _write(dag_run: DagRun, session: Any) -> None:
    if dag_run.note:  # a person's note stays
        return
    note = note_of(dag_run, session)
    if note:
        dag_run.note = note[:1000]  # the note column holds 1000 characters
        log.info("note of %s/%s: %s", dag_run.dag_id, dag_run.run_id, note.splitlines()[0])


def _safely(dag_run: DagRun) -> None:
    try:
        set_note(dag_run)
    except Exception:  # a note must never change how the scheduler finishes a run
        log.exception("could not set the note of %s/%s", dag_run.dag_id, dag_run.run_id)


@hookimpl
def on_dag_run_success(dag_run: DagRun, msg: str) -> None:
    _safely(dag_run)


@hookimpl
def on_dag_run_failed(dag_run: DagRun, msg: str) -> None:
    _safely(dag_run)

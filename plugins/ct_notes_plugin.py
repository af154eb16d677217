"""Airflow plugin: registers the listener that writes each pipeline run's decision as its DAG run note
(ct_airflow.notes). The only plugin file here; ct_airflow/ itself is a package on PYTHONPATH."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ct_airflow import notes


class CtNotesPlugin(AirflowPlugin):
    name = "ct_notes"
    listeners = [notes]

"""Extra links on the pipeline's tasks: buttons in the Airflow UI that open the MLflow run, the Evidently drift
report and the model version a task worked on.

Airflow 3 stores each link as an XCom when the task finishes (the worker calls `get_link`; the UI reads the
XCom), so a link is whatever the task noted in `operator.ct_links` while it ran: no MLflow call at parse
time or in the API server. A task that never got that far shows no link. The URLs start at the MLflow UI
(`ml.tracking.ui_url`: $CT_MLFLOW_UI_URL, else the tracking server, else http://127.0.0.1:5000).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

MLFLOW_RUN = "MLflow run"
DRIFT_REPORT = "Drift report"
MODEL_VERSION = "Model version"


class _NotedLink(BaseOperatorLink):
    """A link the task noted under this link's name while it ran."""

    name: str = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        links: dict[str, str] = getattr(operator, "ct_links", None) or {}
        return links.get(self.name, "")


class MlflowRunLink(_NotedLink):
    name = MLFLOW_RUN


class DriftReportLink(_NotedLink):
    name = DRIFT_REPORT


class ModelVersionLink(_NotedLink):
    name = MODEL_VERSION


def note_link(operator: Any, name: str, url: str | None) -> None:
    """Remember a link for the UI (called from execute; Airflow turns it into an XCom when the task ends)."""
    if url:
        links = dict(getattr(operator, "ct_links", None) or {})
        links[name] = url
        operator.ct_links = links

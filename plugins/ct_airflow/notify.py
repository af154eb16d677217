"""Telling a human: the run record's outcome, sent to the HTTP endpoint of an Airflow connection.

`RunRecordNotifier` is an Airflow notifier (BaseNotifier): RunRecordOperator calls it when the record's
`notify` is set (a failed run, or a decay estimated without labels; README "Outcomes") and the model
config names `notify.connection_id`. It POSTs a small JSON document (model, run, status, decision, rule,
reason, the message, the MLflow run id) to `http(s)://host:port/schema` of that connection, with the
connection's password as a bearer token when it has one. Any receiver that takes a JSON webhook works
(an alert manager, a chat incoming webhook behind a small relay, a ticketing hook).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

#: the record fields a notification carries
FIELDS = ("model", "run_key", "run_id", "dag_id", "dag_run_id", "status", "decision", "rule", "reason", "notify",
          "champion_version", "challenger_version", "failed_gates")


class RunRecordNotifier(BaseNotifier):
    """POST the outcome of a run record to an Airflow connection's HTTP endpoint.

    :param connection_id: the Airflow connection (type http or https) to post to (templated)
    :param record: the run record (a dict, as RunRecord.to_dict gives it)
    :param timeout_s: seconds before the request gives up
    """

    template_fields: Sequence[str] = ("connection_id",)

    def __init__(self, *, connection_id: str, record: dict[str, Any], timeout_s: float = 10.0) -> None:
        super().__init__()
        self.connection_id = connection_id
        self.record = record
        self.timeout_s = timeout_s

    def endpoint(self) -> tuple[str, dict[str, str]]:
        """(URL, headers) from the connection."""
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self.connection_id)
        scheme = "https" if conn.conn_type == "https" else "http"
        port = f":{conn.port}" if conn.port else ""
        url = f"{scheme}://{conn.host}{port}/{(conn.schema or '').lstrip('/')}"
        headers = {"Content-Type": "application/json"}
        if conn.password:
            headers["Authorization"] = f"Bearer {conn.password}"
        return url, headers

    def notify(self, context: Context) -> None:
        url, headers = self.endpoint()
        body = json.dumps({k: self.record.get(k) for k in FIELDS}, default=str).encode()
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 (admin-set URL)
            self.log.info("notified %s: HTTP %s", self.connection_id, response.status)

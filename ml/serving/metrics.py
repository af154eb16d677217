"""Prometheus metrics of the server, written by hand (text exposition format 0.0.4).

prometheus_client is not a dependency of the serving image, and the few series we need are cheap to
keep as plain counters: recording a request is a dict lookup, a bisect and three additions.

With several workers each process keeps its own numbers and writes a snapshot to CT_METRICS_DIR
every second; /metrics merges the live numbers of the answering process with the other processes'
snapshots, so a scrape sees the whole server, not whichever worker took the connection. Counters
of workers that exited stay in the sum (counters never go backwards); their gauges are dropped.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ml.procs import alive

log = logging.getLogger(__name__)

#: Latency histogram upper bounds, seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters, histograms and gauges of one process, plus the multi-process merge."""

    def __init__(self, model_info: dict[str, str], metrics_dir: Path | None = None,
                 live: Callable[[], dict[str, dict[str, float]]] | None = None) -> None:
        self.model_info = model_info
        self.metrics_dir = metrics_dir
        self._live = live or dict  # {"counters": {...}, "gauges": {...}} owned by someone else
        # (endpoint, status) -> [count, sum_seconds, bucket_0, ..., bucket_n, +Inf is count]
        self.requests: dict[tuple[str, str], list[float]] = {}
        self.predictions: dict[str, int] = {}
        self.counters: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, str(status))
        row = self.requests.get(key)
        if row is None:
            row = self.requests[key] = [0.0] * (2 + len(BUCKETS))
        row[0] += 1
        row[1] += seconds
        index = bisect.bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):
            row[2 + index] += 1  # per-bucket count; cumulated at exposition

    def count_prediction(self, label: str, n: int = 1) -> None:
        self.predictions[label] = self.predictions.get(label, 0) + n

    def inc(self, name: str, n: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # ---- multi-process ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        live = self._live()
        return {"pid": os.getpid(), "requests": [[e, s, row] for (e, s), row in list(self.requests.items())],
                "predictions": dict(self.predictions), "counters": {**self.counters, **live.get("counters", {})},
                "gauges": {"ct_workers": 1, **live.get("gauges", {})}}

    def write_snapshot(self) -> None:
        if self.metrics_dir is None:
            return
        target = self.metrics_dir / f"{os.getpid()}.json"
        tmp = target.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot()))
            tmp.replace(target)
        except OSError as exc:
            log.warning("metrics: cannot write snapshot %s: %s", target, exc)

    def start(self, interval_s: float = 1.0) -> None:
        """Write snapshots every `interval_s` (only with a metrics folder, i.e. several workers)."""
        if self.metrics_dir is None or self._thread is not None:
            return
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.write_snapshot()  # visible to the other workers' scrapes from the start

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.write_snapshot()

        self._thread = threading.Thread(target=loop, name="metrics-snapshot", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.write_snapshot()

    def _others(self) -> list[dict[str, Any]]:
        if self.metrics_dir is None or not self.metrics_dir.is_dir():
            return []
        out = []
        for path in self.metrics_dir.glob("*.json"):
            if path.stem == str(os.getpid()):
                continue
            try:
                snap = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced right now: the next scrape sees it
            if not alive(int(snap.get("pid", 0))):
                snap["gauges"] = {}
            out.append(snap)
        return out

    # ---- exposition ------------------------------------------------------------------------------

    def render(self) -> str:
        """The whole server's metrics in Prometheus text format."""
        requests: dict[tuple[str, str], list[float]] = {}
        predictions: dict[str, float] = {}
        counters: dict[str, float] = {}
        gauges: dict[str, float] = {}
        for snap in [self.snapshot(), *self._others()]:
            for endpoint, status, row in snap["requests"]:
                acc = requests.setdefault((endpoint, status), [0.0] * len(row))
                for i, v in enumerate(row):
                    acc[i] += v
            for table, part in ((predictions, snap["predictions"]), (counters, snap["counters"]),
                                (gauges, snap["gauges"])):
                for k, v in part.items():
                    table[k] = table.get(k, 0) + v
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        family("ct_http_requests_total", "counter", "HTTP requests by endpoint and status code.")
        for (endpoint, status), row in sorted(requests.items()):
            lines.append(f'ct_http_requests_total{{endpoint="{_esc(endpoint)}",status="{status}"}} {int(row[0])}')
        family("ct_http_request_duration_seconds", "histogram",
               "Time from request start to the end of the response body, by endpoint and status code.")
        for (endpoint, status), row in sorted(requests.items()):
            labels = f'endpoint="{_esc(endpoint)}",status="{status}"'
            cumulative = 0.0
            for bound, count in zip(BUCKETS, row[2:], strict=True):
                cumulative += count
                lines.append(f'ct_http_request_duration_seconds_bucket{{{labels},le="{bound}"}} {int(cumulative)}')
            lines.append(f'ct_http_request_duration_seconds_bucket{{{labels},le="+Inf"}} {int(row[0])}')
            lines.append(f"ct_http_request_duration_seconds_sum{{{labels}}} {row[1]:.6f}")
            lines.append(f"ct_http_request_duration_seconds_count{{{labels}}} {int(row[0])}")
        family("ct_predictions_total", "counter", "Predictions served, by predicted class.")
        for label, count in sorted(predictions.items()):
            lines.append(f'ct_predictions_total{{class="{_esc(label)}"}} {int(count)}')
        family("ct_model_info", "gauge", "The model being served (value is always 1).")
        info = ",".join(f'{k}="{_esc(v)}"' for k, v in self.model_info.items())
        lines.append(f"ct_model_info{{{info}}} 1")
        counter_help = {
            "ct_feedback_total": "Feedback labels accepted.",
            "ct_prediction_log_written_total": "Prediction-log lines written (predictions and feedback).",
            "ct_prediction_log_dropped_total": "Prediction-log records dropped (queue full or write error).",
            "ct_prediction_log_write_errors_total": "Failed prediction-log batch writes.",
            "ct_model_switches_total": "Switches to the version the followed alias moved to (CT_MODEL_FOLLOW_S).",
            "ct_model_switch_refused_total": "Versions the followed alias named that failed verification.",
        }
        for name, help_text in counter_help.items():
            family(name, "counter", help_text)
            lines.append(f"{name} {int(counters.get(name, 0))}")
        gauge_help = {
            "ct_prediction_log_queue_depth": "Prediction-log records queued, not yet written.",
            "ct_workers": "Worker processes contributing to these metrics.",
        }
        for name, help_text in gauge_help.items():
            family(name, "gauge", help_text)
            lines.append(f"{name} {gauges.get(name, 0):g}")
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


"""Prometheus metrics of the server, kept and exposed with prometheus_client.

The library is used because of several workers: its multiprocess mode keeps each worker's values in
memory-mapped files that are updated in place as they change, and `MultiProcessCollector` merges the
files of all workers at scrape time, so one scrape covers the whole server whichever worker answers
it, without snapshot files, merge code or exposition-format code (escaping, cumulative buckets,
number formatting) of our own to maintain. One worker needs none of that: each `Metrics` has its own
`CollectorRegistry` in memory.

Several workers (`python -m ml.serving` with CT_WORKERS > 1): the launcher creates a fresh, empty
folder under CT_METRICS_DIR for every server start and sets PROMETHEUS_MULTIPROC_DIR to it before
spawning the workers (prometheus_client picks its value class when it is imported, so a worker must
see the variable from its start). Counters of workers that exited stay in the sums (counters never
go backwards); their gauges (`live*` modes) are dropped: a worker marks itself dead when it stops,
and a scrape drops the files of workers that were killed (pid no longer alive). No series carries a
pid label.

Recording stays cheap: the label children of each (endpoint, status) are looked up once and cached,
so a request costs a dict lookup and a histogram observation; ct_http_requests_total is that
histogram's count, exposed as the counter it always was. Predictions are tallied in a dict and added
to ct_predictions_total when the live values are copied (at each scrape, and every second with
several workers), like the prediction-log writer's totals.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ml.procs import alive

log = logging.getLogger(__name__)

#: Latency histogram upper bounds, seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: HELP of ct_http_requests_total, the request histogram's count exposed as a counter
REQUESTS_HELP = "HTTP requests by endpoint and status code."
#: counters without labels: name -> HELP
COUNTERS = {
    "ct_feedback_total": "Feedback labels accepted.",
    "ct_feedback_conflicts_total": "Feedback labels refused (409): the prediction already had one.",
    "ct_prediction_log_written_total": "Prediction-log lines written (predictions and feedback).",
    "ct_prediction_log_dropped_total": "Prediction-log records dropped (queue full or write error).",
    "ct_prediction_log_write_errors_total": "Failed prediction-log batch writes.",
    "ct_model_switches_total": "Switches to the version the followed alias moved to (CT_MODEL_FOLLOW_S).",
    "ct_model_switch_refused_total": "Versions the followed alias named that failed verification.",
}
#: gauges without labels: name -> HELP; summed over live workers
GAUGES = {
    "ct_prediction_log_queue_depth": "Prediction-log records queued, not yet written.",
    "ct_workers": "Worker processes contributing to these metrics.",
}
MODEL_INFO_LABELS = ("name", "version", "sha256")

#: {"counters": {name: total so far}, "gauges": {name: value now}} read from someone else's state
LiveValues = Callable[[], dict[str, dict[str, float]]]

_LIVE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


class Metrics:
    """The server's series in one process; with `metrics_dir`, one of several workers sharing it."""

    def __init__(self, model_info: dict[str, str], live: LiveValues | None = None) -> None:
        """`live` returns totals kept elsewhere (the prediction-log writer's), copied into the series at
        every scrape and, with several workers, every second. Multiprocess mode is prometheus_client's
        choice (PROMETHEUS_MULTIPROC_DIR set when this process started, see `multiprocess_dir`)."""
        self.metrics_dir = metrics_dir = multiprocess_dir()
        self._live = live or dict
        self.registry = CollectorRegistry()
        reg = self.registry
        # ct_http_requests_total is this histogram's _count, exposed as a counter by collect(): one
        # value fewer to update per request (each update of a multiprocess value writes its file)
        self._duration = Histogram(
            "ct_http_request_duration_seconds",
            "Time from request start to the end of the response body, by endpoint and status code.",
            ("endpoint", "status"), buckets=BUCKETS, registry=reg)
        self._predictions = Counter("ct_predictions_total", "Predictions served, by predicted class.",
                                    ("class",), registry=reg)
        self._model_info = Gauge("ct_model_info", "The model being served (value is always 1).",
                                 MODEL_INFO_LABELS, multiprocess_mode="livemax", registry=reg)
        self._counters = {name: Counter(name, text, registry=reg) for name, text in COUNTERS.items()}
        self._gauges = {name: Gauge(name, text, multiprocess_mode="livesum", registry=reg)
                        for name, text in GAUGES.items()}
        self._gauges["ct_workers"].set(1)
        #: the family order of the exposition (MultiProcessCollector yields them in file order)
        self._order = {m.name: i for i, m in enumerate(reg.collect())}
        #: (endpoint, status) -> the duration histogram's observe for those labels
        self._request_children: dict[tuple[str, int], Callable[[float], None]] = {}
        #: predicted class -> predictions so far, counted here and added to ct_predictions_total by sync():
        #: a plain dict update per prediction instead of a multiprocess value write
        self._prediction_counts: dict[str, int] = {}
        self._predictions_seen: dict[str, int] = {}  # what sync() has added so far, by class
        self._live_seen: dict[str, float] = {}
        self._sync_lock = threading.Lock()
        self.model_info: dict[str, str] = {}
        self.set_model_info(model_info)
        self._source = MultiProcessCollector(None, str(metrics_dir)) if metrics_dir is not None else reg
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- recording (request path) ----------------------------------------------------------------

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """One finished request: its duration goes into the histogram (whose count is the request count)."""
        observe = self._request_children.get((endpoint, status))
        if observe is None:
            observe = self._request_children[(endpoint, status)] = self._duration.labels(
                endpoint, str(status)).observe
        observe(seconds)

    def count_prediction(self, label: str, n: int = 1) -> None:
        """`n` predictions of class `label` (in ct_predictions_total from the next sync: scrape, or 1 s)."""
        counts = self._prediction_counts
        counts[label] = counts.get(label, 0) + n

    def count_predictions(self, labels: Sequence[str]) -> None:
        """The predictions of one request, by predicted class."""
        counts = self._prediction_counts
        for label in labels:
            counts[label] = counts.get(label, 0) + 1

    def inc(self, name: str, n: float = 1) -> None:
        """Add `n` to one of the COUNTERS."""
        self._counters[name].inc(n)

    def set_model_info(self, model_info: dict[str, str]) -> None:
        """The model now served by this process; the previous label set stops reading 1 (and is left
        out of the exposition unless another live worker still serves it)."""
        new = tuple(model_info[k] for k in MODEL_INFO_LABELS)
        if self.model_info:
            old = tuple(self.model_info[k] for k in MODEL_INFO_LABELS)
            if old != new:
                self._model_info.labels(*old).set(0)  # multiprocess mode cannot remove a label set
        self._model_info.labels(*new).set(1)
        self.model_info = dict(model_info)

    # ---- values counted elsewhere; lifecycle; several workers --------------------------------------

    def sync(self) -> None:
        """Copy the prediction counts and the `live` totals into the series (counters by their increase
        since the last copy). Called at every scrape, every second with several workers, and at stop."""
        live = self._live()
        predictions = dict(self._prediction_counts)  # one C-level copy: safe while requests add to it
        with self._sync_lock:
            for label, total in predictions.items():
                increase = total - self._predictions_seen.get(label, 0)
                if increase > 0:
                    self._predictions.labels(label).inc(increase)
                    self._predictions_seen[label] = total
            for name, total in live.get("counters", {}).items():
                increase = total - self._live_seen.get(name, 0)
                if increase > 0:
                    self._counters[name].inc(increase)
                    self._live_seen[name] = total
            for name, value in live.get("gauges", {}).items():
                self._gauges[name].set(value)

    def start(self, interval_s: float = 1.0) -> None:
        """With several workers, copy the live values every `interval_s`, so the other workers' scrapes
        see them; one worker copies them when it is scraped."""
        self.sync()
        if self.metrics_dir is None or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.sync()
                except Exception as exc:  # metrics must never take the worker down
                    log.warning("metrics: cannot update the live values: %s: %s", type(exc).__name__, exc)

        self._thread = threading.Thread(target=loop, name="metrics-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Final copy of the live values; with several workers, this worker's gauges leave the sums."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sync()
        if self.metrics_dir is not None:
            mark_process_dead(os.getpid(), str(self.metrics_dir))

    def forget_dead_workers(self) -> None:
        """Drop the gauge files of workers that are gone without stopping (killed): their counters stay."""
        if self.metrics_dir is None:
            return
        own = os.getpid()
        try:
            names = os.listdir(self.metrics_dir)
        except OSError:
            return
        for pid in {int(m[1]) for m in map(_LIVE_FILE.match, names) if m}:
            if pid != own and not alive(pid):
                mark_process_dead(pid, str(self.metrics_dir))

    # ---- exposition --------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The families of the whole server (prometheus_client's Collector interface)."""
        families = sorted(self._source.collect(), key=lambda m: self._order.get(m.name, len(self._order)))
        for family in families:
            if family.name == "ct_http_request_duration_seconds":
                requests = CounterMetricFamily("ct_http_requests", REQUESTS_HELP, labels=("endpoint", "status"))
                for sample in family.samples:
                    if sample.name == "ct_http_request_duration_seconds_count":
                        requests.add_metric((sample.labels["endpoint"], sample.labels["status"]), sample.value)
                yield requests
            if family.name == "ct_model_info":
                family.samples = [s for s in family.samples if s.value]  # label sets no worker serves
            else:
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family

    def render(self) -> str:
        """The whole server's metrics in Prometheus text format (0.0.4)."""
        self.sync()
        self.forget_dead_workers()
        return generate_latest(self).decode()


def multiprocess_dir() -> Path | None:
    """prometheus_client's multiprocess folder when it runs in multiprocess mode, else None.

    The mode is fixed when prometheus_client is imported (PROMETHEUS_MULTIPROC_DIR set or not);
    `python -m ml.serving` sets the variable for its workers when CT_WORKERS > 1."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    path = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or "")
    if not path.is_dir():
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR={str(path)!r} is not a folder: prometheus_client "
                           "needs it for the metrics of several workers")
    return path

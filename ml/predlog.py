"""The prediction log: what the server answered, and the labels that came back later.

The serving process appends one JSON line per prediction and one per feedback label; the drift and
performance step reads them back as the "current" window of the next run. This module owns the
format on both sides, so writer and reader cannot disagree.

Layout (one file per serving process, so several workers or replicas never share a file)::

    <root>/predictions/date=YYYY-MM-DD/<host>-<pid>.jsonl
    <root>/feedback/date=YYYY-MM-DD/<host>-<pid>.jsonl

Prediction line::

    {"prediction_id": "3f2a...", "timestamp": "2025-06-01T12:00:00.123456+00:00",
     "model_version": "7", "features": {"age": 41, "department": "Sales"},
     "output": {"label": "1", "probabilities": {"0": 0.28, "1": 0.72}}}

Feedback line: ``{"prediction_id": "3f2a...", "timestamp": "...", "label": "1"}``.
The date partition is the UTC date of the line's timestamp. A prediction takes one label: the server
answers 409 to a second one, and the reader keeps the first label of an id (a second one that reached
the log anyway, e.g. through another worker, is ignored and counted, never "the latest wins").

A prediction whose categorical value the model never saw, accepted with ``CT_UNSEEN_CATEGORY=mark``,
carries ``"unseen": ["department"]``; the reader counts those lines.

Batch scoring (ml.batch) writes the same lines with ``"source": "batch"``, one file per scoring run
(`BatchLogFile`), so drift and monitoring see batch traffic too; the reader keeps them.

Traffic that is not users': a request with the header ``X-CT-Traffic: smoke`` (what every deploy's smoke
test sends, ml.deploy.smoke) is logged with ``"traffic": "smoke"``; the reader leaves those lines out of
the window unless asked. Any other value is logged as given; lines without the key are users' traffic.

Safe rollout (ml.serving.variants) adds two optional keys: ``"variant": "canary"`` (or ``"champion"``) on
the lines of a server that splits traffic between two versions, and ``"shadow": {"model_version", "label",
"probabilities"}``, the challenger's answer to the same request when one is served in shadow.

Windows bounded by time: `read_prediction_log(..., since=, until=)` keeps the predictions whose timestamp is
in [since, until]; `window_since` turns the config's `data.current_window` ("7d", "24h", "since_champion")
into that `since`.

Writing never blocks a request: `PredictionLogWriter.log_prediction` appends to a bounded in-memory
queue; a background thread writes in batches every `flush_interval_s` and flushes, and `close()`
drains the queue and fsyncs. When the queue is full the record is dropped and counted (the caller
decides whether that is acceptable: the server answers predictions anyway, but refuses feedback).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import socket
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ml.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from ml.data import ReadLimits

log = logging.getLogger(__name__)

PREDICTIONS = "predictions"
FEEDBACK = "feedback"
#: Columns `read_prediction_log` adds next to the features.
META_COLUMNS = ("prediction_id", "timestamp", "model_version", "prediction")
#: The request header that marks traffic that is not users' (lower case, as ASGI delivers it), and the value
#: the smoke test sends.
TRAFFIC_HEADER = "x-ct-traffic"
SMOKE = "smoke"
_PARTITION_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_MAX_BATCH_LINES = 10_000


def is_prediction_log(path: str | Path) -> bool:
    """Whether `path` is the root folder of a prediction log (it holds a `predictions/` folder)."""
    p = Path(str(path).removeprefix("file://"))
    return p.is_dir() and (p / PREDICTIONS).is_dir()


def _file_stem() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]+", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def prediction_record(prediction_id: str, stamp: str, model_version: str, features: dict[str, Any], label: str,
                      probabilities: dict[str, float], *, traffic: str | None = None,
                      source: str | None = None, unseen: list[str] | None = None, variant: str | None = None,
                      shadow: dict[str, Any] | None = None) -> dict[str, Any]:
    """One prediction line (the module docstring's format); `source` marks lines not from the server
    (``batch``), `traffic` the X-CT-Traffic header of the request, `unseen` the features whose category the
    model never saw (CT_UNSEEN_CATEGORY=mark), `variant` and `shadow` the rollout's (module docstring)."""
    record: dict[str, Any] = {"prediction_id": prediction_id, "timestamp": stamp, "model_version": model_version,
                              "features": features, "output": {"label": label, "probabilities": probabilities}}
    if traffic is not None:
        record["traffic"] = traffic
    if source is not None:
        record["source"] = source
    if unseen:
        record["unseen"] = unseen
    for key, value in (("variant", variant), ("shadow", shadow)):
        if value is not None:
            record[key] = value
    return record


class BatchLogFile:
    """The predictions of one batch-scoring run, as one file of the prediction log.

    Lines go to `<root>/predictions/date=<day of timestamp>/batch-<run key>.jsonl.partial` (the reader skips
    it) and `commit()` renames it into place, replacing what an earlier attempt of the same run wrote on any
    day: a run that fails half-way logs nothing, and a re-run never logs its rows twice.
    """

    def __init__(self, root: str | Path, run_key: str, timestamp: float) -> None:
        import msgspec

        self.root = Path(root)
        self.stamp = _iso(timestamp)
        name = "batch-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", run_key) + ".jsonl"
        self.path = self.root / PREDICTIONS / f"date={self.stamp[:10]}" / name
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] = open(self.partial, "wb")  # noqa: SIM115
        self._encode = msgspec.json.Encoder().encode
        self.written = 0

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append prediction records (`prediction_record(..., source="batch")`)."""
        encode = self._encode
        self._fh.write(b"".join(encode(r) + b"\n" for r in records))
        self.written += len(records)

    def commit(self) -> Path:
        """fsync, then put the file in place (earlier attempts' files of this run are removed)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        for old in (self.root / PREDICTIONS).glob(f"date=*/{self.path.name}"):
            old.unlink()
        self.partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Drop what was written (the run failed)."""
        if not self._fh.closed:
            self._fh.close()
        self.partial.unlink(missing_ok=True)


class PredictionLogWriter:
    """Append-only JSON-lines writer of predictions and feedback, fed through a bounded queue.

    `log_prediction` / `log_feedback` are safe to call from the event loop: they only append a tuple
    to a deque. One daemon thread (started by `start()`) encodes and writes; `close()` drains
    everything still queued, fsyncs and closes the files. The counters (`depth`, `dropped`,
    `written`, `write_errors`) feed the server's /metrics.
    """

    def __init__(self, root: str | Path, queue_size: int = 65_536, flush_interval_s: float = 0.05) -> None:
        self.root = Path(root)
        self.queue_size = queue_size
        self.flush_interval_s = flush_interval_s
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._files: dict[tuple[str, str], IO[bytes]] = {}
        self._stem = _file_stem()
        self._closed = False

    @property
    def depth(self) -> int:
        """Records queued and not yet written."""
        return len(self._queue)

    def start(self) -> None:
        """Create the folders (failing early on a read-only path) and start the writer thread."""
        if self._thread is not None:
            return
        for kind in (PREDICTIONS, FEEDBACK):
            (self.root / kind).mkdir(parents=True, exist_ok=True)
        self._stem = _file_stem()  # the pid of the process that writes, not of the one that built us
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()
        log.info("prediction log: writing to %s/{%s,%s}/date=*/%s.jsonl", self.root, PREDICTIONS, FEEDBACK,
                 self._stem)

    def _enqueue(self, item: tuple[Any, ...]) -> bool:
        if self._closed or len(self._queue) >= self.queue_size:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("prediction log: %s, %d record(s) dropped so far",
                            "writer closed" if self._closed else f"queue full ({self.queue_size})", self.dropped)
            return False
        self._queue.append(item)
        return True

    def log_prediction(self, prediction_id: str, timestamp: float, model_version: str,
                       features: dict[str, Any], label: str, probabilities: dict[str, float],
                       traffic: str | None = None, unseen: list[str] | None = None, variant: str | None = None,
                       shadow: dict[str, Any] | None = None) -> bool:
        """Queue one prediction (timestamp: POSIX seconds; `traffic`: the X-CT-Traffic header, None for users;
        `unseen`: categorical features whose value the model never saw; `variant` and `shadow`: see the module
        docstring). False when it had to be dropped."""
        return self._enqueue((PREDICTIONS, timestamp, prediction_id, model_version, features, label, probabilities,
                              traffic, unseen, variant, shadow))

    def log_feedback(self, prediction_id: str, timestamp: float, label: str) -> bool:
        """Queue one feedback label for an earlier prediction. False when it had to be dropped."""
        return self._enqueue((FEEDBACK, timestamp, prediction_id, label))

    # ---- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.flush_interval_s)
            while self._queue:
                self._write_batch()
            if stopping:
                return

    def _write_batch(self) -> None:
        import msgspec

        encode = msgspec.json.Encoder().encode
        batches: dict[tuple[str, str], list[bytes]] = {}
        taken = 0
        while self._queue and taken < _MAX_BATCH_LINES:
            item = self._queue.popleft()
            taken += 1
            kind, ts = item[0], item[1]
            stamp = _iso(ts)
            if kind == PREDICTIONS:
                record = prediction_record(item[2], stamp, item[3], item[4], item[5], item[6], traffic=item[7],
                                           unseen=item[8], variant=item[9], shadow=item[10])
            else:
                record = {"prediction_id": item[2], "timestamp": stamp, "label": item[3]}
            batches.setdefault((kind, stamp[:10]), []).append(encode(record) + b"\n")
        for key, lines in batches.items():
            try:
                fh = self._file(*key)
                fh.write(b"".join(lines))
                fh.flush()
                self.written += len(lines)
            except (OSError, ValueError) as exc:
                self.write_errors += 1
                self.dropped += len(lines)
                log.error("prediction log: cannot write %d %s line(s) for %s: %s", len(lines), key[0], key[1], exc)

    def _file(self, kind: str, day: str) -> IO[bytes]:
        fh = self._files.get((kind, day))
        if fh is None:
            # A new day: close (and fsync) the previous partition's file of this kind.
            for old in [k for k in self._files if k[0] == kind]:
                self._close_file(self._files.pop(old))
            folder = self.root / kind / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            fh = self._files[(kind, day)] = open(folder / f"{self._stem}.jsonl", "ab")  # noqa: SIM115
        return fh

    @staticmethod
    def _close_file(fh: IO[bytes]) -> None:
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()

    def close(self, timeout_s: float = 30.0) -> None:
        """Write everything still queued, fsync and close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("prediction log: writer did not finish within %.0f s; %d record(s) may be lost",
                          timeout_s, len(self._queue))
        while self._queue:  # never started, or a writer that died: write from this thread
            self._write_batch()
        for fh in self._files.values():
            try:
                self._close_file(fh)
            except OSError as exc:
                log.error("prediction log: fsync/close failed: %s", exc)
        self._files.clear()
        log.info("prediction log closed: %d line(s) written, %d dropped", self.written, self.dropped)


# ---- reading -----------------------------------------------------------------------------------

def _as_date(value: date | str | None, name: str) -> date | None:
    if value is None or isinstance(value, date):
        return value.date() if isinstance(value, datetime) else value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise DataError(f"{name}={value!r}: expected a date YYYY-MM-DD") from None


def _partition_files(root: Path, kind: str, start: date | None, end: date | None) -> list[Path]:
    base = root / kind
    if not base.is_dir():
        return []
    files: list[Path] = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        match = _PARTITION_RE.match(folder.name)
        if not match:
            log.warning("prediction log: ignoring %s (not a date=YYYY-MM-DD partition)", folder)
            continue
        day = date.fromisoformat(match.group(1))
        if (start and day < start) or (end and day > end):
            continue
        files.extend(sorted(folder.glob("*.jsonl")))
    return files


def _records(files: list[Path]) -> list[dict[str, Any]]:
    """Every JSON object in the files. A line that is not one (a torn last line after a crash) is
    skipped with a warning rather than failing the whole window."""
    try:  # msgspec is 4-5x faster than json here; it ships with the serving image and with mlflow
        import msgspec

        loads, errors = msgspec.json.Decoder().decode, (ValueError, msgspec.DecodeError)
    except ImportError:
        loads, errors = json.loads, (ValueError,)
    out: list[dict[str, Any]] = []
    for path in files:
        bad = 0
        with path.open("rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    record = loads(line)
                except errors:
                    bad += 1
                    continue
                if isinstance(record, dict) and "prediction_id" in record:
                    out.append(record)
                else:
                    bad += 1
        if bad:
            log.warning("prediction log: skipped %d unreadable line(s) in %s", bad, path)
    return out


def feedback_ids(path: str | Path) -> set[str]:
    """The prediction ids that already have a label in the log (what the server seeds its 409 check with)."""
    root = Path(str(path).removeprefix("file://"))
    return {str(r["prediction_id"]) for r in _records(_partition_files(root, FEEDBACK, None, None))}


def first_labels(feedback: pd.DataFrame) -> tuple[pd.Series, int]:
    """(label per prediction id: the first one given, number of later labels ignored). A prediction takes one
    label; a second one that reached the log (another worker, an older server) never overwrites it."""
    first = feedback.drop_duplicates("prediction_id", keep="first")
    ignored = len(feedback) - len(first)
    if ignored:
        log.warning("prediction log: %d later feedback label(s) for already labelled prediction(s) ignored "
                    "(the first label of a prediction counts)", ignored)
    return first.set_index("prediction_id")["label"], ignored


def read_prediction_records(path: str | Path, start: date | str | None = None,
                            include_smoke: bool = False) -> list[dict[str, Any]]:
    """The prediction lines as logged (dicts, with `variant` and `shadow` where the server wrote them), from
    the partitions of `start` on; smoke-test lines left out unless `include_smoke`."""
    root = Path(str(path).removeprefix("file://"))
    if not is_prediction_log(root):
        raise DataError(f"{root} is not a prediction log (no '{PREDICTIONS}/' folder inside)")
    records = _records(_partition_files(root, PREDICTIONS, _as_date(start, "start"), None))
    return records if include_smoke else [r for r in records if r.get("traffic") != SMOKE]


def read_feedback(path: str | Path, start: date | str | None = None) -> pd.DataFrame:
    """Feedback labels as a frame (prediction_id, timestamp, label), oldest first.

    `start` skips partitions older than that date; there is no end: labels arrive late.
    """
    import pandas as pd

    root = Path(str(path).removeprefix("file://"))
    rows = _records(_partition_files(root, FEEDBACK, _as_date(start, "start"), None))
    frame = pd.DataFrame.from_records(
        [(r["prediction_id"], r.get("timestamp"), r.get("label")) for r in rows],
        columns=["prediction_id", "timestamp", "label"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def window_since(current_window: str | None, *, as_of: datetime, champion_promoted_at: str | None = None
                 ) -> datetime | None:
    """The oldest prediction time a window takes (`data.current_window`): None (everything), "<N>d"/"<N>h"
    before `as_of`, or "since_champion" (when the champion was promoted; everything while there is none)."""
    from datetime import timedelta

    if current_window is None:
        return None
    if current_window == "since_champion":
        if not champion_promoted_at:
            return None
        promoted = datetime.fromisoformat(champion_promoted_at)
        return promoted if promoted.tzinfo else promoted.replace(tzinfo=UTC)
    count, unit = int(current_window[:-1]), current_window[-1]
    return as_of - timedelta(hours=count * (24 if unit == "d" else 1))


def _days(start: date | str | None, end: date | str | None, since: datetime | None,
          until: datetime | None) -> tuple[date | None, date | None]:
    """The partition days to read: the dates given, narrowed to the days of `since`/`until`."""
    start_d, end_d = _as_date(start, "start"), _as_date(end, "end")
    if since is not None:
        start_d = max(filter(None, (start_d, since.astimezone(UTC).date())))
    if until is not None:
        end_d = min(filter(None, (end_d, until.astimezone(UTC).date())))
    if start_d and end_d and start_d > end_d:
        raise DataError(f"start {start_d} is after end {end_d}")
    return start_d, end_d


def _prediction_rows(files: list[Path], include_smoke: bool
                     ) -> tuple[list[dict[str, Any]], dict[str, None], int, int]:
    """(rows, feature names in order of appearance, smoke-test lines left out, lines marked `unseen`)."""
    rows: list[dict[str, Any]] = []
    feature_names: dict[str, None] = {}
    smoke = marked = 0
    for record in _records(files):
        if not include_smoke and record.get("traffic") == SMOKE:
            smoke += 1
            continue
        marked += bool(record.get("unseen"))
        features = record.get("features") or {}
        feature_names.update(dict.fromkeys(features))
        output = record.get("output") or {}
        rows.append({**features, "prediction_id": record["prediction_id"], "timestamp": record.get("timestamp"),
                     "model_version": record.get("model_version"), "prediction": output.get("label")})
    return rows, feature_names, smoke, marked


def _within(frame: pd.DataFrame, since: datetime | None, until: datetime | None) -> pd.DataFrame:
    import pandas as pd

    if since is None and until is None:
        return frame
    keep = pd.Series(True, index=frame.index)
    if since is not None:
        keep &= frame["timestamp"] >= pd.Timestamp(since)
    if until is not None:
        keep &= frame["timestamp"] <= pd.Timestamp(until)
    return frame[keep].reset_index(drop=True)


def read_prediction_log(path: str | Path, label_column: str | None = None, start: date | str | None = None,
                        end: date | str | None = None, *, since: datetime | None = None,
                        until: datetime | None = None, include_smoke: bool = False,
                        limits: ReadLimits | None = None) -> pd.DataFrame:
    """One row per logged prediction: its features, `prediction_id`, `timestamp` (UTC), `model_version`,
    the predicted label as `prediction` and, when `label_column` is given (the config's target), that
    column filled from feedback (the first label per prediction counts; NaN where none came back).
    `limits` (data.max_bytes, data.max_rows) refuse a window too large before it is parsed whole.

    `start`/`end` (dates, inclusive) select prediction partitions, `since`/`until` (aware datetimes,
    inclusive) the predictions by their timestamp; feedback is read from the first day on with no end,
    because labels arrive after their predictions. Smoke-test traffic is left out unless `include_smoke`.
    No predictions -> an empty frame with the meta columns.
    """
    import numpy as np
    import pandas as pd

    root = Path(str(path).removeprefix("file://"))
    if not is_prediction_log(root):
        raise DataError(f"{root} is not a prediction log (no '{PREDICTIONS}/' folder inside)")
    start_d, end_d = _days(start, end, since, until)
    files = _partition_files(root, PREDICTIONS, start_d, end_d)
    if limits is not None:
        limits.check_bytes(root, sum(f.stat().st_size for f in files))
    rows, feature_names, smoke, marked = _prediction_rows(files, include_smoke)
    if limits is not None:
        limits.check_rows(root, len(rows))
    reserved = {*META_COLUMNS, *([label_column] if label_column else [])}
    clash = sorted(reserved & set(feature_names))
    if clash:
        raise DataError(f"prediction log {root}: feature(s) {clash} collide with the columns "
                        f"{sorted(reserved)} this reader adds; rename the feature or the label column")
    frame = pd.DataFrame.from_records(rows, columns=[*feature_names, *META_COLUMNS])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
    frame = _within(frame, since, until)
    frame["model_version"] = frame["model_version"].astype(object)
    if label_column:
        labels, ignored = first_labels(read_feedback(root, start_d))
        frame.attrs["feedback_ignored"] = ignored
        frame[label_column] = frame["prediction_id"].map(labels).astype(object)
        frame.loc[frame[label_column].isna(), label_column] = np.nan
    frame.attrs["marked_unseen"] = marked
    log.info("read prediction log %s: %d prediction(s) from %d file(s)%s%s%s", root, len(frame), len(files),
             f", {int(frame[label_column].notna().sum())} labelled" if label_column else "",
             f", {smoke} smoke-test line(s) left out" if smoke else "",
             f" (window {since.isoformat() if since else '...'} to {until.isoformat() if until else '...'})"
             if since or until else "")
    return frame

"""The prediction-log format: the writer's files, the reader's frame, feedback joins, date filters,
torn lines, and the queue's drop policy."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pandas as pd
import pytest

from ml.errors import DataError
from ml.predlog import (
    FEEDBACK,
    PREDICTIONS,
    PredictionLogWriter,
    is_prediction_log,
    read_feedback,
    read_prediction_log,
)


def ts(day: str, hour: int = 12) -> float:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00").replace(tzinfo=UTC).timestamp()


def predict(writer: PredictionLogWriter, pid: str, day: str, age: float, dept: str | None = "Sales",
            label: str = "1") -> None:
    assert writer.log_prediction(pid, ts(day), "4", {"age": age, "department": dept}, label,
                                 {"0": 0.25, "1": 0.75})


@pytest.fixture()
def log_dir(tmp_path):
    writer = PredictionLogWriter(tmp_path / "log", flush_interval_s=0.01)
    writer.start()
    predict(writer, "a" * 32, "2025-06-01", 30)
    predict(writer, "b" * 32, "2025-06-01", 41.5, None, "0")
    predict(writer, "c" * 32, "2025-06-02", 52)
    predict(writer, "d" * 32, "2025-06-03", 63)
    writer.log_feedback("a" * 32, ts("2025-06-02", 1), "0")
    writer.log_feedback("a" * 32, ts("2025-06-05", 1), "1")  # later: ignored (the first label counts)
    writer.log_feedback("c" * 32, ts("2025-06-04"), "0")
    writer.log_feedback("f" * 32, ts("2025-06-04"), "1")  # no such prediction: ignored
    writer.close()
    assert (writer.written, writer.dropped, writer.depth) == (8, 0, 0)
    return tmp_path / "log"


def test_layout_and_line_format(log_dir):
    files = sorted(p.relative_to(log_dir).as_posix() for p in log_dir.rglob("*.jsonl"))
    assert [f.rsplit("/", 1)[0] for f in files] == [
        "feedback/date=2025-06-02", "feedback/date=2025-06-04", "feedback/date=2025-06-05",
        "predictions/date=2025-06-01", "predictions/date=2025-06-02", "predictions/date=2025-06-03"]
    name = files[0].rsplit("/", 1)[1]
    assert name.endswith(".jsonl") and name.rsplit("-", 1)[1].removesuffix(".jsonl").isdigit()  # <host>-<pid>
    first = json.loads((log_dir / files[3]).read_text().splitlines()[0])
    assert first == {"prediction_id": "a" * 32, "timestamp": "2025-06-01T12:00:00.000000+00:00",
                     "model_version": "4", "features": {"age": 30, "department": "Sales"},
                     "output": {"label": "1", "probabilities": {"0": 0.25, "1": 0.75}}}
    assert is_prediction_log(log_dir) and not is_prediction_log(log_dir / PREDICTIONS)


def test_read_joins_first_feedback(log_dir):
    frame = read_prediction_log(log_dir, label_column="attrition")
    assert list(frame.columns) == ["age", "department", "prediction_id", "timestamp", "model_version",
                                   "prediction", "attrition"]
    assert frame["prediction_id"].tolist() == ["a" * 32, "b" * 32, "c" * 32, "d" * 32]
    assert frame["age"].tolist() == [30, 41.5, 52, 63]
    assert frame["department"].isna().tolist() == [False, True, False, False]
    assert frame["prediction"].tolist() == ["1", "0", "1", "1"]
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2025-06-01T12:00:00", tz="UTC")
    labels = frame.set_index("prediction_id")["attrition"]
    assert labels["a" * 32] == "0" and labels["c" * 32] == "0"  # a's second label never overwrites the first
    assert frame.attrs["feedback_ignored"] == 1
    assert pd.isna(labels["b" * 32]) and pd.isna(labels["d" * 32])
    assert "attrition" not in read_prediction_log(log_dir).columns


def test_date_range_selects_prediction_partitions(log_dir):
    frame = read_prediction_log(log_dir, label_column="y", start="2025-06-02", end=date(2025, 6, 2))
    assert frame["prediction_id"].tolist() == ["c" * 32]
    assert frame["y"].tolist() == ["0"]  # feedback from later partitions still joins
    assert len(read_prediction_log(log_dir, start="2025-06-03")) == 1
    assert len(read_prediction_log(log_dir, end="2025-06-01")) == 2
    with pytest.raises(DataError, match="after end"):
        read_prediction_log(log_dir, start="2025-06-03", end="2025-06-01")
    with pytest.raises(DataError, match="YYYY-MM-DD"):
        read_prediction_log(log_dir, start="June")


def test_read_feedback(log_dir):
    feedback = read_feedback(log_dir)
    assert feedback["prediction_id"].tolist() == ["a" * 32, "c" * 32, "f" * 32, "a" * 32]
    assert feedback["label"].tolist() == ["0", "0", "1", "1"]
    assert len(read_feedback(log_dir, start="2025-06-05")) == 1


def test_torn_and_foreign_lines_are_skipped(log_dir, caplog):
    target = next((log_dir / PREDICTIONS / "date=2025-06-03").glob("*.jsonl"))
    with target.open("a") as fh:
        fh.write('{"prediction_id": "e", "features": {"age": 1}')  # a crash mid-line
    (log_dir / PREDICTIONS / "notes").mkdir()
    (log_dir / PREDICTIONS / "date=2025-06-03" / "x.jsonl").write_text('[1, 2]\n\n')
    frame = read_prediction_log(log_dir)
    assert len(frame) == 4
    assert "skipped 1 unreadable line(s)" in caplog.text and "notes" in caplog.text


def test_empty_and_missing_logs(tmp_path):
    (tmp_path / "log" / PREDICTIONS).mkdir(parents=True)
    frame = read_prediction_log(tmp_path / "log", label_column="y")
    assert len(frame) == 0 and {"prediction_id", "timestamp", "model_version", "prediction", "y"} <= set(
        frame.columns)
    with pytest.raises(DataError, match="not a prediction log"):
        read_prediction_log(tmp_path)
    assert not is_prediction_log(tmp_path / "nope")


def test_feature_colliding_with_reader_columns_is_an_error(tmp_path):
    writer = PredictionLogWriter(tmp_path)
    writer.start()
    writer.log_prediction("a" * 32, ts("2025-01-01"), "1", {"prediction": 3.0}, "1", {"1": 1.0})
    writer.close()
    with pytest.raises(DataError, match="collide"):
        read_prediction_log(tmp_path)
    with pytest.raises(DataError, match="collide"):
        read_prediction_log(tmp_path, label_column="prediction")


def test_full_queue_drops_and_counts(tmp_path):
    writer = PredictionLogWriter(tmp_path, queue_size=3)  # not started: nothing drains the queue
    results = [writer.log_prediction(str(i), ts("2025-01-01"), "1", {"x": i}, "1", {"1": 1.0}) for i in range(5)]
    assert results == [True, True, True, False, False] and writer.dropped == 2 and writer.depth == 3
    assert writer.log_feedback("z", ts("2025-01-01"), "1") is False
    writer.close()  # writes what was queued even though the thread never ran
    assert writer.written == 3 and writer.depth == 0
    assert writer.log_prediction("late", ts("2025-01-01"), "1", {"x": 0}, "1", {"1": 1.0}) is False
    lines = (tmp_path / PREDICTIONS / "date=2025-01-01").glob("*.jsonl")
    assert sum(len(f.read_text().splitlines()) for f in lines) == 3
    assert not (tmp_path / FEEDBACK).exists()


def test_unwritable_root_fails_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        PredictionLogWriter(blocker / "log").start()


# ---- windows bounded by time, smoke traffic left out -----------------------------------------------

def test_since_and_until_bound_the_window_by_timestamp(log_dir):
    since = datetime(2025, 6, 1, 13, tzinfo=UTC)  # after a's and b's 12:00 on the first day
    frame = read_prediction_log(log_dir, label_column="y", since=since)
    assert frame["prediction_id"].tolist() == ["c" * 32, "d" * 32]
    assert frame["y"].tolist()[0] == "0"  # c's label, given two days later, still joins
    until = datetime(2025, 6, 2, 12, tzinfo=UTC)  # inclusive
    assert read_prediction_log(log_dir, since=since, until=until)["prediction_id"].tolist() == ["c" * 32]
    assert read_prediction_log(log_dir, until=datetime(2025, 5, 31, tzinfo=UTC)).empty


@pytest.mark.parametrize(("window", "promoted_at", "expected"), [
    (None, None, None),
    ("7d", None, datetime(2025, 6, 3, 12, tzinfo=UTC)),
    ("36h", "2025-06-01T00:00:00+00:00", datetime(2025, 6, 9, 0, tzinfo=UTC)),
    ("since_champion", "2025-06-08T09:30:00+00:00", datetime(2025, 6, 8, 9, 30, tzinfo=UTC)),
    ("since_champion", None, None),  # no champion yet: everything
])
def test_window_since(window, promoted_at, expected):
    from ml.predlog import window_since

    as_of = datetime(2025, 6, 10, 12, tzinfo=UTC)
    assert window_since(window, as_of=as_of, champion_promoted_at=promoted_at) == expected


def test_smoke_traffic_is_logged_as_such_and_left_out_of_the_window(tmp_path):
    from ml.predlog import SMOKE

    writer = PredictionLogWriter(tmp_path, flush_interval_s=0.01)
    writer.start()
    writer.log_prediction("u" * 32, ts("2025-06-01"), "4", {"age": 30}, "1", {"1": 0.7, "0": 0.3})
    writer.log_prediction("s" * 32, ts("2025-06-01"), "4", {"age": 99}, "1", {"1": 0.7, "0": 0.3}, SMOKE)
    writer.close()
    lines = [json.loads(line) for f in (tmp_path / PREDICTIONS).rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert [line.get("traffic") for line in lines] == [None, "smoke"]  # users' lines keep their format
    assert read_prediction_log(tmp_path)["prediction_id"].tolist() == ["u" * 32]
    assert read_prediction_log(tmp_path, include_smoke=True)["prediction_id"].tolist() == ["u" * 32, "s" * 32]


def test_the_smoke_test_marks_its_requests(tmp_path):
    """ml.deploy.smoke sends X-CT-Traffic: smoke on every request (seen by a real HTTP server)."""
    import http.server
    import threading

    from ml.deploy.smoke import smoke_test

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.headers.get("X-CT-Traffic"))
            body = json.dumps({"status": "ok", "model_version": "1"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = smoke_test(f"http://127.0.0.1:{server.server_address[1]}", [{"age": 1.0}], "1")
    finally:
        server.shutdown()
    assert not result.passed  # this server is no model server; the headers are the point
    assert len(seen) >= 3 and set(seen) == {"smoke"}

"""The window reader refuses what it must not read, naming the problem: URLs (a real HTTP server shows
nothing is fetched), duplicate columns, truncated files, a Parquet file named .csv, windows above the size
limits; and `screen_window` drops the rows that break the contract, keeping only model columns."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.config import load_config
from ml.contract import screen_window
from ml.data import ReadLimits, read_window
from ml.errors import DataError
from ml.predlog import PredictionLogWriter
from tests.conftest import DATA, DEMO_CONFIG


@pytest.fixture(scope="module")
def config():
    return load_config(DEMO_CONFIG)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return pd.read_csv(DATA / "current_no_drift.csv").head(200)


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 that serves a CSV and counts the requests it gets."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            hits.append(self.path)
            body = b"age,salary\n1,2\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_urls_are_refused_and_nothing_is_fetched(http_server):
    url, hits = http_server
    with pytest.raises(DataError, match=r"URLs \(http://\) are not read; give a local path, or list 'http' in "
                                        "data.allowed_schemes"):
        read_window(f"{url}/secret.csv")
    assert hits == []
    allowed = read_window(f"{url}/secret.csv", limits=ReadLimits(allowed_schemes=("http",)))
    assert list(allowed.frame.columns) == ["age", "salary"] and hits == ["/secret.csv"]


def test_duplicate_column_names_are_named(tmp_path, rows):
    csv = tmp_path / "dup.csv"
    csv.write_text("age,salary,age\n30,1000,31\n")
    with pytest.raises(DataError, match=r"dup.csv: duplicate column names \['age'\] in the header"):
        read_window(str(csv))
    parquet = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array([1]), pa.array([2])], names=["salary", "salary"]), parquet)
    with pytest.raises(DataError, match=r"dup.parquet: duplicate column names \['salary'\]"):
        read_window(str(parquet))
    jsonl = tmp_path / "dup.jsonl"
    jsonl.write_text('{"age": 1, "age": 2}\n')
    with pytest.raises(DataError, match=r"dup.jsonl:1: duplicate column name 'age'"):
        read_window(str(jsonl))


def test_truncated_files_are_named(tmp_path, rows):
    whole = rows.to_csv(index=False)
    cut = tmp_path / "cut.csv"
    cut.write_text(whole[:-12])  # mid-number of the last line
    with pytest.raises(DataError, match="cut.csv looks truncated: its last line has no line end"):
        read_window(str(cut))
    parquet = tmp_path / "cut.parquet"
    rows.to_parquet(parquet, index=False)
    data = parquet.read_bytes()
    parquet.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.parquet is a truncated Parquet file"):
        read_window(str(parquet))
    jsonl = tmp_path / "cut.jsonl"
    jsonl.write_text('{"age": 30}\n{"age": 4')
    with pytest.raises(DataError, match=r"cut.jsonl:2: not valid JSON .*the file looks truncated"):
        read_window(str(jsonl))


def test_a_parquet_file_named_csv_is_named(tmp_path, rows):
    wrong = tmp_path / "window.csv"
    rows.to_parquet(wrong, index=False)
    with pytest.raises(DataError, match=r"window.csv is a Parquet file \(magic bytes PAR1\) named .csv: rename it"):
        read_window(str(wrong))
    not_parquet = tmp_path / "window.parquet"
    not_parquet.write_text(rows.to_csv(index=False))
    with pytest.raises(DataError, match="window.parquet is not a Parquet file"):
        read_window(str(not_parquet))


def test_oversized_windows_are_refused_before_they_are_read_whole(tmp_path, rows):
    csv = tmp_path / "big.csv"
    rows.to_csv(csv, index=False)
    parquet = tmp_path / "big.parquet"
    rows.to_parquet(parquet, index=False)
    for path in (csv, parquet):
        with pytest.raises(DataError, match=r"has (more than )?\S+ rows, above data.max_rows 100"):
            read_window(str(path), limits=ReadLimits(max_rows=100))
        assert read_window(str(path), limits=ReadLimits(max_rows=200)).rows == 200
    with pytest.raises(DataError, match=r"big.csv is [\d,]+ bytes, above data.max_bytes 1,000"):
        read_window(str(csv), limits=ReadLimits(max_bytes=1000))
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        rows.head(60).to_csv(folder / f"part-{i}.csv", index=False)
    with pytest.raises(DataError, match=r"parts has more than 150 rows, above data.max_rows 150"):
        read_window(str(folder), limits=ReadLimits(max_rows=150))


def _prediction_log(root, records: list[dict]) -> None:
    writer = PredictionLogWriter(root)
    ts = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
    for i, features in enumerate(records):
        writer.log_prediction(f"{i:032x}", ts + i, "1", features, "0", {"0": 0.9, "1": 0.1})
    writer.close()


def test_prediction_log_windows_have_limits_too(tmp_path, rows):
    records = rows.drop(columns=["attrition"]).to_dict(orient="records")
    _prediction_log(tmp_path / "log", records)
    assert read_window(str(tmp_path / "log"), "attrition").rows == 200
    with pytest.raises(DataError, match="above data.max_rows 199"):
        read_window(str(tmp_path / "log"), "attrition", limits=ReadLimits(max_rows=199))
    with pytest.raises(DataError, match="above data.max_bytes 5,000"):
        read_window(str(tmp_path / "log"), "attrition", limits=ReadLimits(max_bytes=5000))


def test_one_poisoned_row_is_dropped_and_counted_not_blocking(config, tmp_path, rows):
    records = rows.drop(columns=["attrition"]).to_dict(orient="records")
    records[7] = records[7] | {"age": 200}  # what an older server (no contract in the model) logged
    _prediction_log(tmp_path / "log", records)
    window, quarantine = screen_window(config, read_window(str(tmp_path / "log"), config.target))
    assert window.rows == 199 and 200 not in set(window.frame["age"])
    assert quarantine.summary() == {"rows": 200, "dropped": 1, "reasons": {"column 'age' outside [16.0, 80.0]": 1}}
    assert quarantine.problem("current", config.contract.max_invalid_fraction) is None
    assert json.loads(json.dumps(quarantine.to_dict()))["examples"] == {"column 'age' outside [16.0, 80.0]": "200"}


def test_above_the_fraction_limit_the_window_is_blocked_naming_the_reasons(config, rows):
    poisoned = rows.copy()
    poisoned["age"] = poisoned["age"].astype(object)
    poisoned.loc[:4, "age"] = "forty"
    poisoned.loc[5:6, "satisfaction_score"] = 9.0
    _, quarantine = screen_window(config, _window(poisoned))
    assert quarantine.dropped == 7
    problem = quarantine.problem("current", config.contract.max_invalid_fraction)
    assert problem == ("current window: 7 of 200 rows (3.5%) break the contract (column 'age' not numeric: 5 rows, "
                       "e.g. 'forty'; column 'satisfaction_score' outside [1.0, 5.0]: 2 rows, e.g. 9.0): above "
                       "contract.max_invalid_fraction 1.0%")


def test_only_model_columns_are_kept(config, rows):
    window, _ = screen_window(config, _window(rows.assign(ssn="123-45-6789", email="a@b.c")))
    assert list(window.frame.columns) == [*config.features.numeric, *config.features.categorical, config.target]


def _window(frame: pd.DataFrame):
    from ml.data import Window

    return Window(frame=frame, path="memory", sha256="0" * 64)


@pytest.mark.parametrize("values", [
    [1, 0, 1], [1.0, float("nan"), 0.0, 2.5], ["a", None, "b", float("nan")], [True, False],
    [1, "1", 1.0, True, None, float("nan"), pd.NA], pd.array([1, None, 0], dtype="Int64"),
    pd.Categorical(["x", None, "y"]), pd.array(["a", None], dtype="string"), [1e20, 3.0, -0.0], [],
])
def test_label_keys_are_label_key_of_every_value(values):
    from ml.data import label_key, label_keys

    series = pd.Series(values, dtype=object if isinstance(values, list) and not values else None)
    keys = label_keys(series)
    assert list(keys) == [label_key(v) for v in series]
    assert all(type(k) is str for k in keys)


def test_the_stacked_model_frame_is_the_model_frame_of_the_concatenated_rows(config):
    import numpy as np

    from ml.data import model_frame, stacked_model_frame

    frame = pd.read_csv(DATA / "reference.csv").head(200)
    frame.loc[frame.index[:7], "department"] = None
    frame.loc[frame.index[3:9], "salary"] = float("nan")
    rows = np.array([5, 3, 150, 3])
    expected = model_frame(pd.concat([frame, frame.iloc[rows]], ignore_index=True), config)
    expected = expected.astype({c: np.float32 for c in config.features.numeric})  # what ONNX reads
    stacked = stacked_model_frame([(frame, None), (frame, rows)], config)
    assert all(stacked[c].dtype == np.float32 for c in config.features.numeric)
    pd.testing.assert_frame_equal(stacked, expected)


def test_a_parquet_window_is_read_for_the_columns_asked_for(tmp_path, config):
    from ml.contract import model_columns

    frame = pd.read_csv(DATA / "reference.csv").head(50).assign(note="not a model column")
    path = tmp_path / "window.parquet"
    frame.to_parquet(path, index=False)
    wanted = [*model_columns(config), "absent"]
    window = read_window(str(path), config.target, columns=wanted)
    assert list(window.frame.columns) == model_columns(config)
    pd.testing.assert_frame_equal(window.frame, frame[model_columns(config)])
    assert screen_window(config, window)[0].frame is window.frame  # nothing to drop: not copied
    assert "note" in read_window(str(path)).frame.columns

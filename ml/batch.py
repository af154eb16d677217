"""Batch scoring: a Parquet or CSV dataset scored by the champion's ONNX model, in bounded memory.

`score_batch` loads the model exactly as the server does (ml.serving.model.resolve_model: the registry's
`champion` alias, or any `models:/` URI or file, sha256-verified), streams the input in chunks of
`batch.chunk_rows` rows (pyarrow: Parquet row groups / CSV blocks; memory depends on the chunk, not on the
input), and for each chunk writes one row group of predictions and, with `batch.log_predictions`, the same
rows to the prediction log as online predictions are logged (``"source": "batch"``, ml.predlog.BatchLogFile),
so drift checks and the monitor see batch traffic too.

Output (Parquet): the `batch.id_column` (when set), `prediction_id` (feedback can name it), `label`,
`proba_<class>` per class, `model_version`, `model_sha256`, `scored_at`. Categorical inputs are canonicalised
as the server canonicalises request values (numbers 3 and 3.0 -> "3", missing -> the model's missing
category), so a row scores the same in batch as through POST /predict. Missing numeric values go to the
model as NaN (the server refuses them with 422).

Nothing is left half-written: the output file and the log file are written under temporary names and
renamed into place only when every chunk scored; a re-run of the same run key replaces both.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import DataError
from ml.result import Result

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from ml.config import ModelConfig
    from ml.serving.model import LoadedModel

log = logging.getLogger(__name__)

SOURCE = "batch"
_CSV_BLOCK_BYTES_PER_ROW = 96
#: rows turned into Python objects at once for the prediction log (a chunk's worth would be ~100 MB of them)
_LOG_SLICE_ROWS = 4096


@dataclass(frozen=True)
class BatchResult(Result):
    """One batch-scoring run: what was scored, by which model file, and where the predictions went."""

    summary_fields = ("model", "version", "sha256", "rows", "output_path", "prediction_log", "seconds")

    model: str
    version: str
    sha256: str
    input_path: str
    output_path: str
    rows: int
    chunks: int
    seconds: float
    run_key: str
    scored_at: str
    #: the prediction-log file the rows were logged to (None: batch.log_predictions false)
    prediction_log: str | None = None
    label_counts: dict[str, int] | None = None


def load_champion(config: ModelConfig, model_uri: str | None = None, expected_sha256: str | None = None
                  ) -> LoadedModel:
    """The model to score with, loaded and verified as the server loads it (default: the champion alias)."""
    from ml.serving.model import resolve_model
    from ml.serving.settings import Settings

    uri = model_uri or f"models:/{config.name}@champion"
    return resolve_model(Settings(model_uri=uri, expected_sha256=expected_sha256))


def output_file(config: ModelConfig, output_path: str | None, run_key: str) -> Path:
    """`output_path` when it names a .parquet file, else `predictions-<run key>.parquet` in that folder
    (default batch.output_path, else $CT_HOME/batch/<name>)."""
    import re

    from ml.tracking import ct_home

    target = output_path or config.resolve(config.batch.output_path)
    if target and target.endswith(".parquet"):
        return Path(target)
    folder = Path(target) if target else ct_home() / "batch" / config.name
    return folder / f"predictions-{re.sub(r'[^A-Za-z0-9_.-]+', '_', run_key)}.parquet"


def iter_chunks(path: str, numeric: list[str], categorical: list[str], extra: list[str],
                chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """The input's feature (and `extra`) columns, chunk by chunk: Parquet (file or folder) or CSV."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.dataset as ds

    source = Path(path.removeprefix("file://"))
    if not source.exists():
        raise DataError(f"batch input {source} not found (batch.input_path or --input)")
    columns = [*numeric, *categorical, *extra]
    if source.suffix.lower() in (".csv", ".txt"):
        schema_of = pcsv.open_csv(source, read_options=pcsv.ReadOptions(block_size=1 << 16)).schema
        _check_columns(source, schema_of.names, columns)
        types = {c: pa.float64() for c in numeric} | {c: pa.string() for c in categorical}
        reader = pcsv.open_csv(source, read_options=pcsv.ReadOptions(
            block_size=max(1 << 20, chunk_rows * _CSV_BLOCK_BYTES_PER_ROW)),
            convert_options=pcsv.ConvertOptions(include_columns=columns, column_types=types))
        yield from reader
        return
    dataset = ds.dataset(source, format="parquet")
    _check_columns(source, dataset.schema.names, columns)
    # readahead bounded to one batch: the default (16 batches, 4 files) buys IO overlap with memory that
    # grows with the row groups of a large input
    yield from dataset.to_batches(columns=columns, batch_size=chunk_rows, batch_readahead=1, fragment_readahead=1)


def _check_columns(source: Path, present: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise DataError(f"batch input {source}: column(s) {missing} missing (the model needs {wanted})")


def _canonical_category(value: Any, from_text: bool) -> str | None:
    """A categorical value as the server canonicalises it (ml.serving.model.Scorer.check_record); CSV text
    that reads as a number is that number (as training's pandas reader takes it): "3" and "3.0" -> "3"."""
    from ml.data import label_key

    if value is None:
        return None
    if isinstance(value, str):
        if not from_text:
            return value
        try:
            number = float(value)
        except ValueError:
            return value
        return label_key(number) if number == number and abs(number) != float("inf") else value
    return label_key(value)


def feed_of(batch: pa.RecordBatch, numeric: list[str], categorical: list[str], from_text: bool = False
            ) -> dict[str, np.ndarray]:
    """The onnxruntime feed of one chunk: [n, 1] float32 per numeric feature, [n, 1] str per categorical one."""
    import numpy as np
    import pyarrow.compute as pc

    from ml.data import MISSING_CATEGORY

    feed: dict[str, np.ndarray] = {}
    for name in numeric:
        column = pc.cast(batch.column(name), "float64")
        feed[name] = column.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
    for name in categorical:
        encoded = pc.dictionary_encode(batch.column(name))
        canonical = [_canonical_category(v, from_text) for v in encoded.dictionary.to_pylist()]
        lookup = np.array([MISSING_CATEGORY if c is None else c for c in canonical] + [MISSING_CATEGORY],
                          dtype=object)
        indices = encoded.indices.fill_null(len(canonical)).to_numpy(zero_copy_only=False)
        feed[name] = lookup[indices].reshape(-1, 1)
    return feed


def _features(batch: pa.RecordBatch, names: list[str]) -> list[dict[str, Any]]:
    """The chunk's rows as the feature objects the server logs (NaN numbers are logged as null)."""
    columns = [batch.column(n).to_pylist() for n in names]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


@dataclass
class _Sinks:
    """The output Parquet file and the prediction-log file of one run, both under temporary names."""

    output: Path
    partial: Path
    writer: Any = None
    log_file: Any = None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.partial.unlink(missing_ok=True)
        if self.log_file is not None:
            self.log_file.abort()

    def commit(self) -> str | None:
        self.writer.close()
        self.partial.replace(self.output)
        return str(self.log_file.commit()) if self.log_file is not None else None


def _score_chunk(batch: pa.RecordBatch, loaded: LoadedModel, config: ModelConfig, sinks: _Sinks,
                 scored_at: float, from_text: bool, counts: dict[str, int]) -> None:
    """Score one chunk; append its predictions to the output and the log."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml.export import predicted_labels
    from ml.predlog import prediction_record

    model = loaded.model
    classes = [str(c) for c in model.classes]
    proba = model.predict_proba_feed(feed_of(batch, model.numeric, model.categorical, from_text))
    labels = predicted_labels(proba, classes, model.threshold)
    ids = [uuid.uuid4().hex for _ in range(len(labels))]
    for label, n in zip(*np.unique(labels.astype(str), return_counts=True), strict=True):
        counts[str(label)] = counts.get(str(label), 0) + int(n)
    columns: dict[str, Any] = {}
    if config.batch.id_column:
        columns[config.batch.id_column] = batch.column(config.batch.id_column)
    columns |= {"prediction_id": ids, "label": labels.tolist()}
    columns |= {f"proba_{c}": proba[:, i] for i, c in enumerate(classes)}
    columns |= {"model_version": [loaded.version] * len(ids), "model_sha256": [loaded.sha256] * len(ids),
                "scored_at": pa.array(np.full(len(ids), int(scored_at * 1e6), dtype="datetime64[us]"),
                                      type=pa.timestamp("us", tz="UTC"))}
    table = pa.table(columns)
    if sinks.writer is None:
        sinks.partial.parent.mkdir(parents=True, exist_ok=True)
        sinks.writer = pq.ParquetWriter(sinks.partial, table.schema)
    sinks.writer.write_table(table)
    if sinks.log_file is not None:
        stamp = sinks.log_file.stamp
        for start in range(0, len(ids), _LOG_SLICE_ROWS):  # a slice of Python objects at a time, not a chunk
            end = start + _LOG_SLICE_ROWS
            sinks.log_file.write([
                prediction_record(pid, stamp, loaded.version, features, label, dict(zip(classes, row, strict=True)),
                                  source=SOURCE)
                for pid, features, label, row in zip(ids[start:end], _features(batch.slice(start, end - start),
                                                                                 model.features),
                                                     labels[start:end].tolist(), proba[start:end].tolist(),
                                                     strict=True)])


def score_batch(config: ModelConfig, input_path: str | None = None, output_path: str | None = None, *,
                run_key: str | None = None, model_uri: str | None = None, expected_sha256: str | None = None,
                log_predictions: bool | None = None, prediction_log: str | None = None) -> BatchResult:
    """Score a dataset with the champion (or `model_uri`), chunk by chunk; see the module docstring."""
    from ml.deploy.local import served_log
    from ml.predlog import BatchLogFile

    source = input_path or config.resolve(config.batch.input_path)
    if not source:
        raise DataError(f"model {config.name}: nothing to score: set batch.input_path or pass --input")
    started = time.perf_counter()
    scored_at = time.time()
    key = run_key or "batch-" + datetime.fromtimestamp(scored_at, UTC).strftime("%Y%m%dT%H%M%S%fZ")
    loaded = load_champion(config, model_uri, expected_sha256)
    extra = [c for c in [config.batch.id_column] if c and c not in loaded.model.features]
    chunks = iter_chunks(source, loaded.model.numeric, loaded.model.categorical, extra, config.batch.chunk_rows)
    output = output_file(config, output_path, key)
    sinks = _Sinks(output=output, partial=output.with_name(f".{output.name}.{uuid.uuid4().hex}.partial"))
    log_root = served_log(config, prediction_log or config.batch.prediction_log)
    if config.batch.log_predictions if log_predictions is None else log_predictions:
        sinks.log_file = BatchLogFile(log_root, key, scored_at)
    rows = n_chunks = 0
    counts: dict[str, int] = {}
    from_text = Path(source).suffix.lower() in (".csv", ".txt")
    try:
        for batch in chunks:
            _score_chunk(batch, loaded, config, sinks, scored_at, from_text, counts)
            rows += batch.num_rows
            n_chunks += 1
        if sinks.writer is None:
            raise DataError(f"batch input {source} holds no rows: nothing scored, nothing written")
        logged = sinks.commit()
    except BaseException:
        sinks.abort()
        raise
    seconds = time.perf_counter() - started
    log.info("batch: %d rows in %d chunk(s) scored by %s v%s in %.1f s (%.0f rows/s) -> %s", rows, n_chunks,
             config.name, loaded.version, seconds, rows / max(seconds, 1e-9), output)
    return BatchResult(model=config.name, version=loaded.version, sha256=loaded.sha256, input_path=str(source),
                       output_path=str(output), rows=rows, chunks=n_chunks, seconds=round(seconds, 3), run_key=key,
                       scored_at=datetime.fromtimestamp(scored_at, UTC).isoformat(), prediction_log=logged,
                       label_counts=counts)

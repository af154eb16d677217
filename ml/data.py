"""Data windows: reading them, fingerprinting them, and turning them into model inputs.

A window is a CSV, Parquet or JSON-lines file, or a folder of such files (a partitioned prediction
log). Reading is defensive (`ReadLimits`, config `data.*`): local paths only unless `data.allowed_schemes`
lists the URL's scheme; a window above `data.max_bytes` / `data.max_rows` is refused before it is read
whole; duplicate column names, a truncated file and a file whose content is not what its name says
(Parquet named .csv) are each named as such. The model sees features in one canonical form, built here
and nowhere else, so training, evaluation, ONNX export and serving cannot disagree: numeric -> float,
categorical -> string with missing values mapped to MISSING_CATEGORY.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import DataError

if TYPE_CHECKING:
    from datetime import datetime

    import numpy as np
    import pandas as pd

    from ml.config import ModelConfig

log = logging.getLogger(__name__)

MISSING_CATEGORY = "__missing__"
SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".json")
PARQUET_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_ROWS = 2_000_000
DEFAULT_MAX_BYTES = 512 * 1024 * 1024


class WindowTooLarge(DataError):
    """A window above data.max_rows or data.max_bytes."""


@dataclass(frozen=True)
class ReadLimits:
    """What a window reader accepts (config `data.allowed_schemes`, `data.max_rows`, `data.max_bytes`)."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_bytes: int = DEFAULT_MAX_BYTES
    allowed_schemes: tuple[str, ...] = ()

    def check_location(self, path: str, what: str = "window path") -> None:
        """Refuse a URL whose scheme `allowed_schemes` does not list (file:// is a local path)."""
        if "://" not in path:
            return
        scheme = path.split("://", 1)[0].lower()
        if scheme == "file" or scheme in self.allowed_schemes:
            return
        allowed = f" (allowed: {list(self.allowed_schemes)})" if self.allowed_schemes else ""
        raise DataError(f"{what} {path!r}: URLs ({scheme}://) are not read{allowed}; give a local path, or "
                        f"list '{scheme}' in data.allowed_schemes")

    def check_bytes(self, path: str | Path, size: int) -> None:
        if size > self.max_bytes:
            raise WindowTooLarge(f"window {path} is {size:,} bytes, above data.max_bytes {self.max_bytes:,}: "
                            "use a smaller window (data.current_window) or raise data.max_bytes")

    def check_rows(self, path: str | Path, rows: int, exact: bool = True) -> None:
        if rows > self.max_rows:
            count = f"{rows:,}" if exact else f"more than {self.max_rows:,}"
            raise WindowTooLarge(f"window {path} has {count} rows, above data.max_rows {self.max_rows:,}: "
                            "use a smaller window (data.current_window) or raise data.max_rows")


@dataclass(frozen=True)
class Window:
    """A loaded data window and where it came from."""

    frame: pd.DataFrame
    path: str
    sha256: str
    #: what the reader left out or noticed (a prediction log: `feedback_ignored`, `marked_unseen`)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.frame)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"folder {path} holds no {'/'.join(SUFFIXES)} files")
        return files
    if not path.exists():
        raise DataError(f"data file {path} not found")
    return [path]


def sha256_of(path: str | Path) -> str:
    """Content hash of a file, or of a folder's data files (names and contents, in sorted order)."""
    p = Path(path)
    digest = hashlib.sha256()
    files = _files(p)
    for f in files:
        if p.is_dir():
            digest.update(str(f.relative_to(p)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DataError(f"duplicate column name {key!r} in a JSON object: each column must appear once")
        seen[key] = value
    return seen


def _read_jsonl(path: Path, max_rows: int) -> pd.DataFrame:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    ends_with_newline = _last_byte(path) == b"\n"
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line, object_pairs_hook=_no_duplicate_keys))
            except DataError as exc:
                raise DataError(f"{path}:{lineno}: {exc}") from None
            except json.JSONDecodeError as exc:
                cut = " (the file looks truncated: its last line has no line end)" \
                    if not ends_with_newline and not fh.readline() else ""
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}){cut}") from None
            if len(rows) > max_rows:
                ReadLimits(max_rows=max_rows).check_rows(path, len(rows), exact=False)
    return pd.DataFrame.from_records(rows)


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1)


def _sniff(path: Path) -> None:
    """Refuse a file whose first bytes say it is not what its name says, or whose end says it was cut."""
    with path.open("rb") as fh:
        head = fh.read(4)
        fh.seek(-min(4, path.stat().st_size), 2)
        tail = fh.read(4)
    is_parquet = path.suffix in (".parquet", ".pq")
    if head == PARQUET_MAGIC and not is_parquet:
        raise DataError(f"{path} is a Parquet file (magic bytes PAR1) named {path.suffix}: rename it to .parquet")
    if head[:2] == _GZIP_MAGIC:
        raise DataError(f"{path} is gzip-compressed, not plain {path.suffix}: decompress it first")
    if is_parquet and head != PARQUET_MAGIC:
        raise DataError(f"{path} is not a Parquet file (it does not start with the magic bytes PAR1)")
    if is_parquet and tail != PARQUET_MAGIC:
        raise DataError(f"{path} is a truncated Parquet file (no PAR1 footer at its end): it was cut while "
                        "being written or copied")
    if path.suffix == ".csv" and tail[-1:] != b"\n":
        raise DataError(f"{path} looks truncated: its last line has no line end (cut mid-line or mid-number). "
                        "If the file is complete, end it with a newline")


def _csv_header(path: Path) -> list[str]:
    import csv

    with path.open(newline="", errors="replace") as fh:
        return next(csv.reader(fh), [])


def _duplicates(names: list[Any]) -> list[str]:
    seen: set[str] = set()
    return sorted({str(n) for n in names if str(n) in seen or seen.add(str(n))})


def _read_csv(path: Path, max_rows: int) -> pd.DataFrame:
    import pandas as pd

    dupes = _duplicates(_csv_header(path))
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes} in the header: each column must appear once")
    try:
        frame = pd.read_csv(path, nrows=max_rows + 1)
    except pd.errors.ParserError as exc:
        cut = " (the file looks truncated)" if "EOF" in str(exc) else ""
        raise DataError(f"cannot read {path}: malformed CSV{cut}: {exc}") from None
    if len(frame) > max_rows:
        ReadLimits(max_rows=max_rows).check_rows(path, len(frame), exact=False)
    return frame


def _read_parquet(path: Path, max_rows: int, columns: list[str] | None = None) -> pd.DataFrame:
    """The file's columns `columns` (those it has; None: all), converted column by column so that the Arrow
    buffers are freed as they are converted, and Arrow's freed memory handed back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path)
    names = meta.schema_arrow.names
    dupes = _duplicates(names)
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}: each column must appear once")
    ReadLimits(max_rows=max_rows).check_rows(path, meta.metadata.num_rows)
    wanted = None if columns is None else [c for c in columns if c in names]
    frame = meta.read(columns=wanted).to_pandas(self_destruct=True, split_blocks=True)
    pa.default_memory_pool().release_unused()
    return frame


def _read_one(path: Path, max_rows: int = DEFAULT_MAX_ROWS, columns: list[str] | None = None) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty (0 bytes): expected a header and rows")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported format '{path.suffix}' (use {', '.join(SUFFIXES)})")
    _sniff(path)
    try:
        if path.suffix == ".csv":
            frame = _read_csv(path, max_rows)
        elif path.suffix in (".parquet", ".pq"):
            frame = _read_parquet(path, max_rows, columns)
        else:
            frame = _read_jsonl(path, max_rows)
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types; the user needs the file and the cause
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    dupes = _duplicates(list(frame.columns))
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}: each column must appear once")
    return frame


def read_window(path: str, label_column: str | None = None, *, since: datetime | None = None,
                until: datetime | None = None, limits: ReadLimits | None = None,
                columns: list[str] | None = None) -> Window:
    """Read a window from a local path (file or folder), or a URL whose scheme `limits.allowed_schemes` lists.
    `columns`: a Parquet file is read for these columns only (those it has), every other format whole.

    A folder written by the model server (a prediction log, ml.predlog) is read as its predictions'
    features plus `label_column`, filled from the feedback sent to the server (NaN where none came),
    the predictions made in [since, until] only (`data.current_window`), smoke-test traffic left out.
    """
    limits = limits or ReadLimits()
    limits.check_location(path)
    if "://" in path and not path.startswith("file://"):
        return _read_url(path, limits)
    local = Path(path.removeprefix("file://"))
    from ml.predlog import META_COLUMNS, is_prediction_log, read_prediction_log

    if is_prediction_log(local):
        frame = read_prediction_log(local, label_column=label_column, since=since, until=until,
                                    limits=limits).drop(columns=list(META_COLUMNS))
        if frame.empty:
            span = f" between {since or 'the start'} and {until or 'now'}" if since or until else " yet"
            raise DataError(f"prediction log {local} holds no predictions{span}: nothing to check")
        counts = {k: int(frame.attrs.get(k, 0)) for k in ("feedback_ignored", "marked_unseen")}
        return Window(frame=frame, path=str(local), sha256=sha256_of(local), counts=counts)
    return Window(frame=_read_files(local, limits, columns), path=str(local), sha256=sha256_of(local))


def _read_files(local: Path, limits: ReadLimits, columns: list[str] | None = None) -> pd.DataFrame:
    import pandas as pd

    files = _files(local)
    limits.check_bytes(local, sum(f.stat().st_size for f in files))
    frames: list[pd.DataFrame] = []
    rows = 0
    for f in files:
        try:
            frames.append(_read_one(f, limits.max_rows - rows, columns))
        except WindowTooLarge:
            if len(files) == 1:
                raise
            limits.check_rows(local, limits.max_rows + 1, exact=False)  # the folder's rows, not this file's
        rows += len(frames[-1])
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    limits.check_rows(local, len(frame))
    log.info("read %s: %d rows x %d columns", local, len(frame), frame.shape[1])
    return frame


def _read_url(path: str, limits: ReadLimits) -> Window:
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if path.endswith((".parquet", ".pq")) else \
            pd.read_csv(path, nrows=limits.max_rows + 1)
    except Exception as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    limits.check_rows(path, len(frame), exact=len(frame) <= limits.max_rows)
    dupes = _duplicates(list(frame.columns))
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}: each column must appear once")
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()
    return Window(frame=frame, path=path, sha256=digest)


def load_windows(config: ModelConfig) -> tuple[Window, Window | None]:
    """The reference window and, when configured, the current window."""
    limits = config.data.limits
    reference = read_window(config.reference_path, config.target, limits=limits)
    current = read_window(config.current_path, config.target, limits=limits) if config.current_path else None
    return reference, current


# ---- canonical model inputs ------------------------------------------------------------------

def label_key(value: Any) -> str:
    """A label as a comparable string: 1, 1.0, '1' and True-as-1 all agree; missing -> ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):  # numpy scalar
        return label_key(value.item())
    return str(value)


def label_keys(values: pd.Series) -> np.ndarray:
    """`label_key` of every value (a new object array), computed once per distinct value: a million rows take
    milliseconds, not seconds. An object column is keyed value by value unless its present values are all
    strings (a string is its own key; the missing ones are keyed one by one)."""
    import numpy as np
    import pandas as pd

    def keyed(distinct: list[Any], codes: np.ndarray) -> np.ndarray:
        return np.array([label_key(v) for v in distinct], dtype=object)[codes]

    if values.dtype != object:
        codes, distinct = pd.factorize(values, use_na_sentinel=False)
        return keyed(distinct.tolist(), codes)
    array = values.to_numpy(dtype=object)
    missing = pd.isna(array)
    present = array[~missing]
    if pd.api.types.infer_dtype(present, skipna=False) not in ("string", "empty"):
        return np.array([label_key(v) for v in array], dtype=object)
    keys = np.empty(len(array), dtype=object)
    codes, distinct = pd.factorize(present)  # equal strings share a key (str and numpy.str_ alike)
    keys[~missing] = keyed(distinct.tolist(), codes)
    keys[missing] = [label_key(v) for v in array[missing]]
    return keys


def take_rows(frame: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """The rows at `positions` (or where a boolean mask is true) as a new frame indexed 0..n-1, copied once:
    `frame.iloc[positions].reset_index(drop=True)` copies the taken rows a second time (a million-row window's
    300,000-row holdout: 84 MB live where the rows take 24)."""
    import pandas as pd

    taken = frame.iloc[positions]
    taken.index = pd.RangeIndex(len(taken))
    return taken


def labelled(frame: pd.DataFrame, config: ModelConfig) -> pd.DataFrame:
    """The rows of a window that carry a label (empty when the target column is absent); the window itself, not
    a copy, when every row does."""
    if config.target not in frame.columns:
        return frame.iloc[0:0]
    present = frame[config.target].notna()
    return frame if present.all() else frame[present]


def class_labels(config: ModelConfig, reference: pd.DataFrame) -> list[str]:
    """Class order of the model outputs: binary -> [negative, positive]; multiclass -> sorted labels."""
    keys = sorted(set(label_keys(reference[config.target].dropna())))
    if config.task == "binary":
        positive = label_key(config.positive_class)
        negatives = [k for k in keys if k != positive]
        return [negatives[0] if negatives else "not " + positive, positive]
    return keys


def encode_target(series: pd.Series, config: ModelConfig, classes: list[str]) -> np.ndarray:
    """Labels -> class indices (binary: 1 for the positive class). Unknown labels raise DataError."""
    import numpy as np
    import pandas as pd

    keys = label_keys(series)
    if config.task == "binary":
        return (keys == label_key(config.positive_class)).astype(np.int64)
    index = {c: i for i, c in enumerate(classes)}
    codes, distinct = pd.factorize(keys)
    unknown = sorted(k for k in distinct if k not in index)
    if unknown:
        raise DataError(f"target '{config.target}' has labels {unknown[:5]} never seen in the reference window")
    return np.array([index[k] for k in distinct], dtype=np.int64)[codes]


def model_frame(frame: pd.DataFrame, config: ModelConfig) -> pd.DataFrame:
    """Features in canonical form: numeric float64, categorical str with MISSING_CATEGORY."""
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for col in config.features.numeric:
        out[col] = _numeric(frame[col])
    for col in config.features.categorical:
        out[col] = _categorical(frame[col])
    return out


def stacked_model_frame(parts: list[tuple[pd.DataFrame, np.ndarray | None]], config: ModelConfig) -> pd.DataFrame:
    """The training frame: the model frame of the rows `rows` (positions, None: every row) of each frame, one
    part after the other (index 0..n-1), `model_frame(pd.concat([frame.iloc[rows], ...], ignore_index=True))`
    without copying the frames' other columns, its numeric columns in float32: the precision the ONNX model
    reads its inputs in, which halves every matrix the pipeline builds while it fits."""
    import numpy as np
    import pandas as pd

    def stacked(canonical: Any, col: str) -> np.ndarray:
        return np.concatenate([canonical(frame[col]) if rows is None else canonical(frame[col])[rows]
                               for frame, rows in parts])

    rows = sum(len(f) if r is None else len(r) for f, r in parts)
    numeric = list(config.features.numeric)
    # one float32 block for the numeric columns: the pipeline's numeric selection is then one array, not the
    # interleaved copy of a block per column (52 MB less at 1.7M rows x 8 columns while the model fits)
    block = np.empty((len(numeric), rows), dtype=np.float32)
    for i, col in enumerate(numeric):
        block[i] = stacked(_numeric, col)
    out = pd.DataFrame(block.T, columns=numeric, copy=False)
    for col in config.features.categorical:
        out[col] = stacked(_categorical, col)
    return out


def _numeric(values: pd.Series) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()


def _categorical(values: pd.Series) -> np.ndarray:
    keys = label_keys(values)
    keys[keys == ""] = MISSING_CATEGORY
    return keys

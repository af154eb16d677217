"""Data windows: reading them, fingerprinting them, and turning them into model inputs.

A window is a CSV, Parquet or JSON-lines file, or a folder of such files (a partitioned prediction
log). The model sees features in one canonical form, built here and nowhere else, so training,
evaluation, ONNX export and serving cannot disagree: numeric -> float, categorical -> string with
missing values mapped to MISSING_CATEGORY.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Window:
    """A loaded data window and where it came from."""

    frame: pd.DataFrame
    path: str
    sha256: str

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


def _read_jsonl(path: Path) -> pd.DataFrame:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return pd.DataFrame.from_records(rows)


def _read_one(path: Path) -> pd.DataFrame:
    import pandas as pd

    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty (0 bytes): expected a header and rows")
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        if path.suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix in (".jsonl", ".json"):
            return _read_jsonl(path)
    except DataError:
        raise
    except Exception as exc:  # pandas raises many types; the user needs the file and the cause
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    raise DataError(f"{path}: unsupported format '{path.suffix}' (use {', '.join(SUFFIXES)})")


def read_window(path: str, label_column: str | None = None, *, since: datetime | None = None,
                until: datetime | None = None) -> Window:
    """Read a window from a local path (file or folder) or a URI pandas can open (s3://, gs://...).

    A folder written by the model server (a prediction log, ml.predlog) is read as its predictions'
    features plus `label_column`, filled from the feedback sent to the server (NaN where none came),
    the predictions made in [since, until] only (`data.current_window`), smoke-test traffic left out.
    """
    import pandas as pd

    if "://" in path and not path.startswith("file://"):
        try:
            frame = pd.read_parquet(path) if path.endswith((".parquet", ".pq")) else pd.read_csv(path)
        except Exception as exc:
            raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
        digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).values.tobytes()).hexdigest()
        return Window(frame=frame, path=path, sha256=digest)
    local = Path(path.removeprefix("file://"))
    from ml.predlog import META_COLUMNS, is_prediction_log, read_prediction_log

    if is_prediction_log(local):
        frame = read_prediction_log(local, label_column=label_column, since=since,
                                    until=until).drop(columns=list(META_COLUMNS))
        if frame.empty:
            span = f" between {since or 'the start'} and {until or 'now'}" if since or until else " yet"
            raise DataError(f"prediction log {local} holds no predictions{span}: nothing to check")
        return Window(frame=frame, path=str(local), sha256=sha256_of(local))
    files = _files(local)
    frames = [_read_one(f) for f in files]
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    log.info("read %s: %d rows x %d columns", local, len(frame), frame.shape[1])
    return Window(frame=frame, path=str(local), sha256=sha256_of(local))


def load_windows(config: ModelConfig) -> tuple[Window, Window | None]:
    """The reference window and, when configured, the current window."""
    reference = read_window(config.reference_path, config.target)
    current = read_window(config.current_path, config.target) if config.current_path else None
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


def labelled(frame: pd.DataFrame, config: ModelConfig) -> pd.DataFrame:
    """The rows of a window that carry a label (empty when the target column is absent)."""
    if config.target not in frame.columns:
        return frame.iloc[0:0]
    return frame[frame[config.target].notna()]


def class_labels(config: ModelConfig, reference: pd.DataFrame) -> list[str]:
    """Class order of the model outputs: binary -> [negative, positive]; multiclass -> sorted labels."""
    keys = sorted({label_key(v) for v in reference[config.target].dropna()})
    if config.task == "binary":
        positive = label_key(config.positive_class)
        negatives = [k for k in keys if k != positive]
        return [negatives[0] if negatives else "not " + positive, positive]
    return keys


def encode_target(series: pd.Series, config: ModelConfig, classes: list[str]) -> np.ndarray:
    """Labels -> class indices (binary: 1 for the positive class). Unknown labels raise DataError."""
    import numpy as np

    keys = [label_key(v) for v in series]
    if config.task == "binary":
        positive = label_key(config.positive_class)
        return np.fromiter((1 if k == positive else 0 for k in keys), dtype=np.int64, count=len(keys))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({k for k in keys if k not in index})
    if unknown:
        raise DataError(f"target '{config.target}' has labels {unknown[:5]} never seen in the reference window")
    return np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))


def model_frame(frame: pd.DataFrame, config: ModelConfig) -> pd.DataFrame:
    """Features in canonical form: numeric float64, categorical str with MISSING_CATEGORY."""
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for col in config.features.numeric:
        out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    for col in config.features.categorical:
        values = frame[col]
        out[col] = values.map(lambda v: MISSING_CATEGORY if label_key(v) == "" else label_key(v)).astype(object)
    return out


"""The served model: resolving and verifying the ONNX file, and scoring validated JSON records.

`resolve_model` turns CT_MODEL_URI into a verified `OnnxModel` (a local path checked against
CT_MODEL_SHA256, or a registry version fetched and checked against its `ct.onnx_sha256` tag).
`Scorer` validates request records by hand against the model's feature lists (no pydantic on the hot
path: a dict lookup and a type check per feature) and against the data contract the model carries
(`ct.contract`, ml.export.serving_contract: numeric [min, max], `allowed` lists, the categories the model
knows: a comparison or a set lookup per feature), and turns onnxruntime's probabilities into the
response objects. Categorical values are canonicalised exactly like training's `ml.data.model_frame`.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.data import MISSING_CATEGORY, label_key
from ml.errors import CTError

if TYPE_CHECKING:
    from ml.export import OnnxModel
    from ml.serving.settings import Settings

log = logging.getLogger(__name__)

_F32_MAX = 3.4028234663852886e38


class ModelLoadError(CTError):
    """The model named by CT_MODEL_URI cannot be served (missing, tampered, not self-contained...)."""


class RequestError(Exception):
    """A client mistake: answered with `status` and {"detail": detail}, never a 500."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class LoadedModel:
    model: OnnxModel
    path: Path
    sha256: str
    version: str
    source: str  # the URI as configured


def _load_verified(path: Path, expected: str | None, source: str) -> OnnxModel:
    from ml.export import ModelIntegrityError, OnnxModel, sha256_bytes

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"refusing to serve {source}: cannot read {path}: {exc.strerror or exc}") from None
    actual = sha256_bytes(data)
    if expected and actual != expected:
        raise ModelLoadError(f"refusing to serve {path}: sha256 mismatch: expected {expected}, actual {actual} "
                             "(the file was modified or is not the version you meant)")
    try:
        return OnnxModel.from_bytes(data, expected_sha256=expected, threads=1)
    except ModelIntegrityError as exc:
        raise ModelLoadError(f"refusing to serve {path} (sha256 {actual}): {exc}") from None
    except Exception as exc:  # protobuf DecodeError, onnxruntime's Fail/InvalidGraph: all mean "not loadable"
        detail = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"refusing to serve {path} (sha256 {actual}): not a loadable ONNX model: "
                             f"{type(exc).__name__}: {detail}") from None


def resolve_model(settings: Settings) -> LoadedModel:
    """Fetch (for models:/ URIs) and load the model, verifying its sha256. Raises ModelLoadError."""
    ref = settings.registry_ref
    if ref is None:
        path = Path(settings.model_uri).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"refusing to start: model file {path} not found (CT_MODEL_URI)")
        if not settings.expected_sha256:
            log.warning("serving %s without an integrity check: set CT_MODEL_SHA256 to pin the file", path)
        model = _load_verified(path, settings.expected_sha256, str(path))
        version = settings.model_version or f"sha256:{model.sha256[:12]}"
        return LoadedModel(model=model, path=path, sha256=model.sha256, version=version, source=str(path))
    name, version, alias = ref
    path, sha = _fetch_from_registry(settings, name, version, alias)
    resolved_version = path.parent.name
    if settings.expected_sha256 and settings.expected_sha256 != sha:
        raise ModelLoadError(f"refusing to serve {settings.model_uri} ({path}): sha256 mismatch: expected "
                             f"{settings.expected_sha256}, registry tag and file have {sha}")
    if settings.model_version and settings.model_version != resolved_version:
        log.warning("CT_MODEL_VERSION=%s ignored: %s resolves to version %s", settings.model_version,
                    settings.model_uri, resolved_version)
    model = _load_verified(path, sha, settings.model_uri)
    return LoadedModel(model=model, path=path, sha256=sha, version=resolved_version, source=settings.model_uri)


def _fetch_from_registry(settings: Settings, name: str, version: str | None,
                         alias: str | None) -> tuple[Path, str]:
    from ml.registry import fetch_onnx, version_by_alias
    from ml.tracking import ct_home, mlflow_client, safe_name

    try:
        client = mlflow_client()
        if alias:
            found = version_by_alias(client, name, alias)
            if found is None:
                raise ModelLoadError(f"refusing to start: registered model '{name}' has no alias '{alias}'")
            version = str(found.version)
        cache = settings.model_cache_dir or ct_home() / "serving" / "models"
        dest = cache / safe_name(name) / str(version)
        path, sha = fetch_onnx(client, name, str(version), dest)
    except ModelLoadError:
        raise
    except Exception as exc:  # RegistryError (tampered artifact, no sha tag) or MLflow's own errors
        detail = " ".join(str(exc).split())[:400]
        raise ModelLoadError(f"refusing to serve {settings.model_uri}: {type(exc).__name__}: {detail}") from None
    log.info("fetched %s -> %s v%s (%s, sha256 %s)", settings.model_uri, name, version, path, sha)
    return path, sha


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class Scorer:
    """Validates JSON records against the model's features and contract, and produces the response objects.

    `unseen_category` (CT_UNSEEN_CATEGORY): a categorical value the model never saw is refused (422) or, with
    `mark`, accepted and reported by `check_record` so the prediction is marked `unseen`.
    """

    def __init__(self, model: OnnxModel, model_version: str, unseen_category: str = "refuse") -> None:
        import json

        self.model = model
        self.model_version = model_version
        self.numeric = list(model.numeric)
        self.categorical = list(model.categorical)
        self.features = [*self.numeric, *self.categorical]
        self.feature_set = frozenset(self.features)
        self.classes = [str(c) for c in model.classes]
        self.class_set = frozenset(self.classes)
        self.threshold = float(model.threshold)
        self.binary = len(self.classes) == 2
        self._load_contract(json.loads(model.meta.get("contract") or "{}"))
        self.mark_unseen = unseen_category == "mark"

    def _load_contract(self, contract: dict[str, Any]) -> None:
        """The checks of `ct.contract` (ml.export.serving_contract), precomputed per feature."""
        if not contract:
            log.warning("model %s carries no data contract (exported before ct.contract): requests are checked "
                        "against its features only", self.model.meta.get("name", "?"))
        self.ranges: dict[str, tuple[float | None, float | None]] = {
            c: (lo, hi) for c, (lo, hi) in contract.get("ranges", {}).items()}
        #: (feature, low, high): the float32 range narrowed to the contract's [min, max], one comparison chain
        self.bounds = [(c, -_F32_MAX if (lo := self.ranges.get(c, (None, None))[0]) is None else max(lo, -_F32_MAX),
                        _F32_MAX if (hi := self.ranges.get(c, (None, None))[1]) is None else min(hi, _F32_MAX))
                       for c in self.numeric]
        self.allowed = {c: frozenset(v) for c, v in contract.get("allowed", {}).items()}
        known = {c: frozenset(v) for c, v in contract.get("known", {}).items()}
        #: (feature, the values accepted without a second look: known and allowed; None = any string)
        self.categories = [(c, known[c] & self.allowed.get(c, known[c]) if c in known else self.allowed.get(c))
                           for c in self.categorical]

    # ---- validation ----------------------------------------------------------------------------

    def check_record(self, record: Any, where: str = "") -> list[str] | None:
        """Validate one record in place (categorical numbers become their canonical strings).

        Raises RequestError(422) naming the field (and the value, for a data-contract violation). Returns
        the categorical features whose value the model never saw (only with `mark`; else they are refused),
        or None. `where` prefixes messages (e.g. "records[3]: ").
        """
        if type(record) is not dict:
            raise RequestError(422, f"{where}expected a JSON object of features, got {_json_type(record)}")
        if len(record) != len(self.features) or record.keys() != self.feature_set:
            missing = [f for f in self.features if f not in record]
            extra = sorted(str(k) for k in record if k not in self.feature_set)
            parts = []
            if missing:
                parts.append(f"missing feature(s) {missing}")
            if extra:
                parts.append(f"unknown field(s) {extra}")
            raise RequestError(422, f"{where}{'; '.join(parts)} (the model expects exactly {self.features})")
        for name, low, high in self.bounds:
            value = record[name]
            kind = type(value)
            if (kind is float or kind is int) and low <= value <= high:  # NaN fails both
                continue
            raise RequestError(422, f"{where}{self._numeric_problem(name, value)}")
        unseen = None
        for name, accepted in self.categories:
            value = record[name]
            if type(value) is str:
                if accepted is None or value in accepted:
                    continue
            elif value is None:
                continue
            elif isinstance(value, int | float) and not (isinstance(value, float) and not math.isfinite(value)):
                value = record[name] = label_key(value)  # 3 and 3.0 -> "3", as training's model_frame does
                if accepted is None or value in accepted:
                    continue
            else:
                raise RequestError(422, f"{where}categorical feature '{name}' must be a string (or null for "
                                        f"missing), got {_json_type(value)}")
            unseen = [*(unseen or []), self._unseen(name, value, where)]
        return unseen

    def _unseen(self, name: str, value: str, where: str) -> str:
        """`name` when its value is allowed but unknown to the model and `mark` is on; else the 422."""
        allowed = self.allowed.get(name)
        if allowed is not None and value not in allowed:
            raise RequestError(422, f"{where}categorical feature '{name}' = {value[:60]!r} is not in the data "
                                    f"contract's allowed list (contract.columns.{name}.allowed)")
        if not self.mark_unseen:
            known = sorted(next(a for c, a in self.categories if c == name) or ())
            raise RequestError(422, f"{where}categorical feature '{name}' = {value[:60]!r} is a category the "
                                    f"model never saw (known: {known[:10]}); CT_UNSEEN_CATEGORY=mark accepts "
                                    "and marks such requests")
        return name

    def _numeric_problem(self, name: str, value: Any) -> str:
        kind = _json_type(value)
        low, high = self.ranges.get(name, (None, None))
        if kind == "number" and math.isfinite(value) and abs(value) <= _F32_MAX and (low is not None or
                                                                                     high is not None):
            shown = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
            return (f"numeric feature '{name}' = {value!r} is outside the data contract's range {shown} "
                    f"(contract.columns.{name})")
        if value is None:
            return (f"numeric feature '{name}' is null: missing numeric values are not accepted, "
                    "send a number")
        if kind == "number":
            return f"numeric feature '{name}' = {value!r} is not a finite float32 number"
        if kind == "string":
            return f"numeric feature '{name}' must be a JSON number, got the string {str(value)[:40]!r}"
        return f"numeric feature '{name}' must be a JSON number, got {kind}"

    # ---- scoring -------------------------------------------------------------------------------

    def feed(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np

        feed: dict[str, Any] = {}
        for name in self.numeric:
            feed[name] = np.array([[r[name]] for r in records], dtype=np.float32)
        for name in self.categorical:
            feed[name] = np.array([[MISSING_CATEGORY if (v := r[name]) is None else v] for r in records],
                                  dtype=object)
        return feed

    def predict(self, records: list[dict[str, Any]], unseen: list[list[str] | None] | None = None
                ) -> tuple[float, list[dict[str, Any]]]:
        """(timestamp, one response object per validated record; `unseen` (per record, from check_record):
        the features whose category the model never saw, reported in the response as `unseen`)."""
        proba = self.model.predict_proba_feed(self.feed(records)).tolist()
        timestamp = time.time()
        classes, version = self.classes, self.model_version
        out: list[dict[str, Any]] = []
        for row in proba:
            if self.binary:
                label = classes[1] if row[1] >= self.threshold else classes[0]
            else:
                label = classes[max(range(len(row)), key=row.__getitem__)]
            out.append({"prediction_id": uuid.uuid4().hex, "model_version": version, "label": label,
                        "probabilities": dict(zip(classes, row, strict=True))})
        if unseen is not None:
            for result, names in zip(out, unseen, strict=True):
                if names:
                    result["unseen"] = names
        return timestamp, out

    def warm_up(self, rounds: int = 5) -> None:
        """Run a few predictions so the first real request does not pay for lazy initialisation."""
        record: dict[str, Any] = {n: 0.0 for n in self.numeric} | {n: None for n in self.categorical}
        for _ in range(rounds):
            self.predict([dict(record)])
        self.predict([dict(record) for _ in range(8)])

    # ---- feedback ------------------------------------------------------------------------------

    def check_feedback(self, item: Any, where: str = "") -> tuple[str, str]:
        """(prediction id as 32 hex digits, canonical class label) of one feedback item."""
        if type(item) is not dict:
            raise RequestError(422, f"{where}expected an object {{\"prediction_id\", \"label\"}}, "
                                    f"got {_json_type(item)}")
        extra = sorted(str(k) for k in item if k not in ("prediction_id", "label"))
        missing = [k for k in ("prediction_id", "label") if k not in item]
        if missing or extra:
            parts = ([f"missing field(s) {missing}"] if missing else []) + (
                [f"unknown field(s) {extra}"] if extra else [])
            raise RequestError(422, f"{where}{'; '.join(parts)} (expected prediction_id and label)")
        raw_id = item["prediction_id"]
        try:
            if type(raw_id) is not str:
                raise ValueError
            prediction_id = uuid.UUID(raw_id).hex
        except ValueError:
            shown = repr(raw_id[:60]) if type(raw_id) is str else _json_type(raw_id)
            raise RequestError(422, f"{where}prediction_id must be the id a prediction returned "
                                    f"(32 hex digits), got {shown}") from None
        raw_label = item["label"]
        if type(raw_label) not in (str, int, float, bool):
            raise RequestError(422, f"{where}label must be a string or number, got {_json_type(raw_label)}")
        label = label_key(raw_label)
        if label not in self.class_set:
            raise RequestError(422, f"{where}label {raw_label!r} is not a class of the model "
                                    f"(classes: {self.classes})")
        return prediction_id, label

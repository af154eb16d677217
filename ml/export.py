"""ONNX export and loading: the served artifact is one self-contained .onnx file.

`to_onnx` converts the fitted pipeline with skl2onnx (one [n, 1] input per feature, float32 for
numerics and string for categoricals, ZipMap off so the output is a plain probability tensor) and
stamps metadata props the server needs to validate requests without the config: feature lists,
class labels, threshold, model name. LightGBM classifiers convert through onnxmltools' converter,
registered with skl2onnx on first use. `OnnxModel.load` verifies the sha256 and refuses external data.
`measure_export` converts and measures what the serving gates judge (size, single-row latency, the
probabilities for parity), so training can refuse a model before the gates step would.
Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import TrainingError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ml.config import ModelConfig

META_PREFIX = "ct."


def serving_contract(pipeline: Any, config: ModelConfig, seen: pd.DataFrame | None = None) -> dict[str, Any]:
    """The data contract the server checks requests against (metadata prop `ct.contract`): per numeric
    feature its [min, max] (contract.columns), per categorical feature the `allowed` list and the
    categories the model knows (its encoder's, plus those of `seen`, a model frame of the holdout)."""
    from ml.data import MISSING_CATEGORY, label_key

    rules = config.contract.columns
    ranges = {c: [rules[c].min, rules[c].max] for c in config.features.numeric
              if c in rules and (rules[c].min is not None or rules[c].max is not None)}
    allowed = {c: [label_key(v) for v in rules[c].allowed] for c in config.features.categorical
               if c in rules and rules[c].allowed is not None}
    known: dict[str, list[str]] = {}
    encoders = dict((name, (step, cols)) for name, step, cols in pipeline.steps[0][1].transformers_)
    if "categorical" in encoders:
        encoder, cols = encoders["categorical"]
        known = {c: [str(v) for v in cats] for c, cats in zip(cols, encoder.categories_, strict=True)}
    if seen is not None:
        for c in known:
            known[c] = sorted(set(known[c]) | {str(v) for v in seen[c].dropna().unique()})
    known = {c: [v for v in values if v != MISSING_CATEGORY] for c, values in known.items()}
    return {"ranges": ranges, "allowed": allowed, "known": known}


def to_onnx(pipeline: Any, config: ModelConfig, classes: list[str], seen: pd.DataFrame | None = None) -> bytes:
    """Serialised ONNX model of a fitted pipeline, with metadata props (`seen`: see `serving_contract`)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(c, FloatTensorType([None, 1])) for c in config.features.numeric]
    inputs += [(c, StringTensorType([None, 1])) for c in config.features.categorical]
    classifier = pipeline.steps[-1][1]
    _register_preprocessing_converters()
    opset = None
    if type(classifier).__module__.startswith("lightgbm."):
        opset = _register_lightgbm_converter()
    try:
        # name: the graph is named after the model, not a random uuid, so the same fit gives the same bytes
        model = convert_sklearn(pipeline, initial_types=inputs, options={id(classifier): {"zipmap": False}},
                                target_opset=opset, name=config.name)
    except Exception as exc:  # skl2onnx raises bare RuntimeError/NotImplementedError for unsupported ops
        raise TrainingError(f"ONNX export of {config.model.estimator} failed: {type(exc).__name__}: {exc}") from None
    # skl2onnx renames inputs that are not identifiers ("m00 score" -> "m00_score"): keep the mapping.
    input_names = [i.name for i in model.graph.input]
    if len(input_names) != len(inputs):
        raise TrainingError(f"ONNX export produced {len(input_names)} inputs for {len(inputs)} features")
    meta = {
        "name": config.name,
        "inputs": json.dumps(input_names),
        "task": config.task,
        "target": config.target,
        "numeric": json.dumps(list(config.features.numeric)),
        "categorical": json.dumps(list(config.features.categorical)),
        "classes": json.dumps(classes),
        "threshold": str(config.model.threshold),
        "estimator": config.model.estimator,
        "contract": json.dumps(serving_contract(pipeline, config, seen)),
    }
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = META_PREFIX + key, value
    model.producer_name = "ct-retraining"
    return model.SerializeToString()


@cache
def _register_preprocessing_converters() -> None:
    """ml.preprocessing's MedianImputer and ChunkedScaler convert as the SimpleImputer and StandardScaler they are
    (only their fit differs)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.operator_converters.scaler_op import convert_sklearn_scaler
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from skl2onnx.shape_calculators.scaler import calculate_sklearn_scaler_output_shapes

    from ml.preprocessing import ChunkedScaler, MedianImputer

    update_registered_converter(MedianImputer, "SklearnMedianImputer", calculate_sklearn_imputer_output_shapes,
                                convert_sklearn_imputer)
    update_registered_converter(ChunkedScaler, "SklearnChunkedScaler", calculate_sklearn_scaler_output_shapes,
                                convert_sklearn_scaler, options={"div": ["std", "div", "div_cast"]})


@cache
def _register_lightgbm_converter() -> dict[str, int]:
    """skl2onnx's documented way to convert a pipeline ending in LightGBM: onnxmltools' converter. Returns
    the opsets to convert with: that converter writes TreeEnsembleClassifier of ai.onnx.ml version 3."""
    from lightgbm import LGBMClassifier
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import get_latest_tested_opset_version, update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                                convert_lightgbm, options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
    return {"": get_latest_tested_opset_version(), "ai.onnx.ml": 3}


#: rows onnxruntime scores in one call in OnnxModel.predict_proba (memory bounded by the chunk, not the frame)
PREDICT_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class ExportMeasure:
    """A pipeline's ONNX file and what the serving gates will measure on it."""

    onnx: bytes
    onnx_proba: np.ndarray  # onnxruntime's probabilities on the rows measured
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def size_bytes(self) -> int:
        return len(self.onnx)


def measure_export(pipeline: Any, config: ModelConfig, classes: list[str], frame: pd.DataFrame) -> ExportMeasure:
    """Convert `pipeline` and score `frame` (a model frame) with onnxruntime, as the gates step will."""
    model = OnnxModel.from_bytes(data := to_onnx(pipeline, config, classes, seen=frame))
    p50, p99 = model.single_row_latencies_ms(frame)
    return ExportMeasure(onnx=data, onnx_proba=model.predict_proba(frame), latency_p50_ms=p50, latency_p99_ms=p99)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelIntegrityError(Exception):
    """The ONNX file is not the one the registry vouches for, or is not self-contained."""


@dataclass(frozen=True)
class OnnxModel:
    """An onnxruntime session plus the metadata stamped by `to_onnx`."""

    session: Any
    sha256: str
    size_bytes: int
    numeric: list[str]
    categorical: list[str]
    classes: list[str]
    threshold: float
    meta: dict[str, str]
    #: feature name -> graph input name, only where they differ
    renamed: dict[str, str]

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @classmethod
    def from_bytes(cls, data: bytes, expected_sha256: str | None = None, threads: int = 1) -> OnnxModel:
        import onnx
        import onnxruntime as ort

        digest = sha256_bytes(data)
        if expected_sha256 and digest != expected_sha256:
            raise ModelIntegrityError(f"sha256 mismatch: file has {digest}, registry expects {expected_sha256}")
        proto = onnx.load_model_from_string(data)
        external = [t.name for t in proto.graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data)]
        if external:
            raise ModelIntegrityError(f"model references external data for {external[:3]}: "
                                      "only self-contained ONNX files are served")
        meta = {p.key.removeprefix(META_PREFIX): p.value for p in proto.metadata_props
                if p.key.startswith(META_PREFIX)}
        missing = [k for k in ("numeric", "categorical", "classes") if k not in meta]
        if missing:
            raise ModelIntegrityError(f"model lacks metadata props {missing}: not exported by this project")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        numeric, categorical = json.loads(meta["numeric"]), json.loads(meta["categorical"])
        graph_inputs = json.loads(meta["inputs"]) if "inputs" in meta else [*numeric, *categorical]
        renamed = {f: i for f, i in zip([*numeric, *categorical], graph_inputs, strict=True) if f != i}
        return cls(session=session, sha256=digest, size_bytes=len(data), numeric=numeric, categorical=categorical,
                   classes=json.loads(meta["classes"]), threshold=float(meta.get("threshold", 0.5)), meta=meta,
                   renamed=renamed)

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None, threads: int = 1) -> OnnxModel:
        return cls.from_bytes(Path(path).read_bytes(), expected_sha256, threads)

    def predict_proba_feed(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities for {feature name: [n, 1] array} (graph input renames applied here)."""
        if self.renamed:
            feed = {self.renamed.get(name, name): value for name, value in feed.items()}
        return self.session.run(["probabilities"], feed)[0]

    def predict_proba(self, frame: pd.DataFrame, chunk_rows: int = PREDICT_CHUNK_ROWS) -> np.ndarray:
        """Probabilities for a canonical model frame (see ml.data.model_frame), scored `chunk_rows` rows at a
        time: onnxruntime's intermediate tensors (one-hot columns, the stacked matrix) grow with the rows it
        is given, so a million-row window in one call would hold ~200 MB of them at once."""
        import numpy as np

        def feed(part: pd.DataFrame) -> dict[str, np.ndarray]:
            arrays = {c: part[c].to_numpy(dtype=np.float32).reshape(-1, 1) for c in self.numeric}
            return arrays | {c: part[c].to_numpy(dtype=object).reshape(-1, 1) for c in self.categorical}

        if len(frame) <= chunk_rows:
            return self.predict_proba_feed(feed(frame))
        return np.concatenate([self.predict_proba_feed(feed(frame.iloc[start:start + chunk_rows]))
                               for start in range(0, len(frame), chunk_rows)])

    def single_row_latency_ms(self, frame: pd.DataFrame, rounds: int = 200, quantile: float = 0.99) -> float:
        """A latency quantile of one-row predictions, in-process (the serving budget's floor)."""
        return self.single_row_latencies_ms(frame, rounds, (quantile,))[0]

    def single_row_latencies_ms(self, frame: pd.DataFrame, rounds: int = 200,
                                quantiles: tuple[float, ...] = (0.5, 0.99)) -> list[float]:
        """Latency quantiles of one-row predictions, in-process, from one series of timings."""
        import numpy as np

        rows = [frame.iloc[[i % len(frame)]] for i in range(min(rounds, 50))]
        feeds = [{c: r[c].to_numpy(dtype=np.float32).reshape(1, 1) for c in self.numeric}
                 | {c: r[c].to_numpy(dtype=object).reshape(1, 1) for c in self.categorical} for r in rows]
        for feed in feeds[:10]:  # warm-up
            self.predict_proba_feed(feed)
        timings = []
        for i in range(rounds):
            start = time.perf_counter()
            self.predict_proba_feed(feeds[i % len(feeds)])
            timings.append((time.perf_counter() - start) * 1000)
        return [float(q) for q in np.quantile(timings, quantiles)]


def predicted_labels(proba: np.ndarray, classes: list[str], threshold: float) -> np.ndarray:
    """Labels exactly as the server picks them: the threshold on the second class for binary, else argmax."""
    import numpy as np

    labels = np.asarray(classes, dtype=object)
    if len(classes) == 2:
        return labels[(proba[:, 1] >= threshold).astype(np.int64)]
    return labels[np.argmax(proba, axis=1)]

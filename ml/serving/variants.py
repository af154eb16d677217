"""Safe rollout inside the serving process: a challenger in shadow, a canary answering a share of traffic.

`Variants.from_settings` loads the optional second and third model (CT_SHADOW_MODEL_* / CT_CANARY_MODEL_*),
each verified against its sha256 like the champion and refused unless it takes exactly the champion's
features and classes. `Variants.serve` is what the request handlers call instead of scoring and logging
themselves when either is configured:

* **canary**: each record is routed by a stable hash of its key (the prediction id, or the feature
  CT_CANARY_KEY, so one customer always meets the same model) to the canary when the hash falls below
  CT_CANARY_FRACTION, else to the champion. Smoke-test traffic always goes to the champion (a deploy's
  smoke test checks the champion's exact outputs). A canary that raises is answered by the champion, the
  error counted for the canary: a canary never fails a request. Every logged line says which `variant`
  answered.
* **shadow**: the answer goes out first; the request's records and answers are queued (bounded, like the
  prediction log) and a background thread scores them with the shadow model and writes each prediction
  line with the shadow's answer attached (`shadow`). The shadow never changes or delays an answer; when
  its queue is full the line is logged without the shadow score and counted.

`stats()` (GET /variants) gives per variant: requests, errors, p50/p99 scoring latency of the last 2,048
calls; the canary controller (ml.deploy.canary) reads it for its guardrails.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ml.serving.model import ModelLoadError, Scorer, resolve_model

if TYPE_CHECKING:
    from ml.predlog import PredictionLogWriter
    from ml.serving.metrics import Metrics
    from ml.serving.settings import Settings

log = logging.getLogger(__name__)

CHAMPION, CANARY, SHADOW = "champion", "canary", "shadow"
_LATENCIES = 2048
#: records the shadow scores at once; between chunks its thread gives the GIL back (see _drain)
_SHADOW_BATCH = 32


@dataclass
class VariantStats:
    """Requests, errors and recent scoring latencies of one variant (one worker process)."""

    requests: int = 0
    errors: int = 0
    latencies: collections.deque[float] | None = None

    def observe(self, seconds: float) -> None:
        if self.latencies is None:
            self.latencies = collections.deque(maxlen=_LATENCIES)
        self.requests += 1
        self.latencies.append(seconds)

    def to_dict(self, version: str | None) -> dict[str, Any]:
        lat = sorted(self.latencies or ())
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 4)) if lat else (lambda q: None)
        return {"version": version, "requests": self.requests, "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else 0.0,
                "latency_p50_ms": pick(0.5), "latency_p99_ms": pick(0.99)}


def bucket(key: str) -> float:
    """A stable number in [0, 1) for a routing key (the same in every process and on every machine)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2.0 ** 64


def _load(settings: Settings, kind: str, champion: Scorer) -> Scorer | None:
    path = getattr(settings, f"{kind}_model_path")
    if path is None:
        return None
    loaded = resolve_model(replace(settings, model_uri=str(path),
                                   expected_sha256=getattr(settings, f"{kind}_model_sha256"),
                                   model_version=getattr(settings, f"{kind}_model_version")))
    scorer = Scorer(loaded.model, loaded.version)
    if scorer.features != champion.features or scorer.classes != champion.classes:
        raise ModelLoadError(f"refusing the {kind} model {path}: it takes features {scorer.features} and classes "
                             f"{scorer.classes}, the champion {champion.features} and {champion.classes}")
    scorer.warm_up()
    log.info("%s: version %s (%s, sha256 %s)", kind, loaded.version, path, loaded.sha256)
    return scorer


def verify_variants(settings: Settings, champion: Scorer) -> None:
    """Load and check the shadow and canary models once, before any socket opens (raises ModelLoadError)."""
    for kind in (SHADOW, CANARY):
        _load(settings, kind, champion)
    if settings.canary_key is not None and settings.canary_key not in champion.feature_set:
        raise ModelLoadError(f"CT_CANARY_KEY={settings.canary_key!r} is not a feature of the model "
                             f"({champion.features})")


class Variants:
    """The canary and/or shadow model of one serving process, and how requests reach them."""

    def __init__(self, settings: Settings, champion: Scorer, writer: PredictionLogWriter | None,
                 metrics: Metrics) -> None:
        self.canary = _load(settings, CANARY, champion)
        self.shadow = _load(settings, SHADOW, champion)
        self.fraction = settings.canary_fraction
        self.key = settings.canary_key
        if self.key is not None and self.key not in champion.feature_set:
            raise ModelLoadError(f"CT_CANARY_KEY={self.key!r} is not a feature of the model ({champion.features})")
        self.writer = writer
        self.metrics = metrics
        self.stats_by_variant = {CHAMPION: VariantStats(), CANARY: VariantStats(), SHADOW: VariantStats()}
        self.shadow_dropped = 0
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._capacity = settings.log_queue_size  # in records, like the prediction log's queue
        self._queued = 0
        self._queued_lock = threading.Lock()  # the event loop adds, the shadow thread takes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, champion: Scorer, writer: PredictionLogWriter | None,
                      metrics: Metrics) -> Variants | None:
        """None when neither a shadow nor a canary is configured (the handlers then take their usual path)."""
        if settings.shadow_model_path is None and settings.canary_model_path is None:
            return None
        return cls(settings, champion, writer, metrics)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self.shadow is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Score (and log) what is still queued, then return: called before the prediction log closes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._drain()

    # ---- the request path ------------------------------------------------------------------------

    def serve(self, champion: Scorer, records: list[dict[str, Any]], traffic: str | None,
              unseen: list[list[str] | None] | None = None) -> list[dict[str, Any]]:
        """Answers for validated records: routed, scored, counted and logged (the shadow after the answer).
        `unseen` (per record, from the champion's check_record): the features whose category the champion
        never saw, marked in the answer and the log whichever variant answered."""
        ids = [uuid.uuid4().hex for _ in records]
        out: list[dict[str, Any] | None] = [None] * len(records)
        answered_by = [CHAMPION] * len(records)
        canary_rows = self._canary_rows(records, ids, traffic)
        if canary_rows:
            rows = [records[i] for i in canary_rows]
            answers = self._score(CANARY, self.canary, rows)  # type: ignore[arg-type]
            if answers is not None:
                for i, answer in zip(canary_rows, answers, strict=True):
                    out[i], answered_by[i] = answer, CANARY
        rest = [i for i, answer in enumerate(out) if answer is None]
        if rest:
            answers = self._score(CHAMPION, champion, [records[i] for i in rest], raise_errors=True)
            for i, answer in zip(rest, answers or [], strict=True):
                out[i] = answer
        timestamp = time.time()
        for i, answer in enumerate(out):
            answer["prediction_id"] = ids[i]  # type: ignore[index]
            if unseen is not None and unseen[i]:
                answer["unseen"] = unseen[i]  # type: ignore[index]
        self.metrics.count_predictions([answer["label"] for answer in out])  # type: ignore[index]
        variants = answered_by if self.canary is not None else [None] * len(records)
        if self.shadow is None or not self._enqueue((timestamp, records, out, variants, traffic)):
            if self.shadow is not None:
                self.shadow_dropped += len(records)  # the queue is full: logged without the shadow's score
            self._log(timestamp, records, out, variants, traffic, None)  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    def _enqueue(self, item: tuple[Any, ...]) -> bool:
        with self._queued_lock:
            if self._queued + len(item[1]) > self._capacity:
                return False
            self._queued += len(item[1])
        self._queue.append(item)
        return True

    def _canary_rows(self, records: list[dict[str, Any]], ids: list[str], traffic: str | None) -> list[int]:
        if self.canary is None or traffic == "smoke":
            return []
        key = self.key
        keys = ids if key is None else [str(r[key]) for r in records]
        return [i for i, k in enumerate(keys) if bucket(k) < self.fraction]

    def _score(self, variant: str, scorer: Scorer, records: list[dict[str, Any]],
               raise_errors: bool = False) -> list[dict[str, Any]] | None:
        stats = self.stats_by_variant[variant]
        start = time.perf_counter()
        try:
            _, answers = scorer.predict(records)
        except Exception:
            stats.requests += 1
            stats.errors += 1
            if raise_errors:
                raise
            log.exception("%s v%s failed to score %d record(s): the champion answers them", variant,
                          scorer.model_version, len(records))
            return None
        stats.observe(time.perf_counter() - start)
        return answers

    def _log(self, timestamp: float, records: list[dict[str, Any]], out: list[dict[str, Any]],
             variants: list[str | None], traffic: str | None, shadow: list[dict[str, Any]] | None) -> None:
        writer = self.writer
        if writer is None:
            return
        for i, (record, answer) in enumerate(zip(records, out, strict=True)):
            writer.log_prediction(answer["prediction_id"], timestamp, answer["model_version"], record, answer["label"],
                                  answer["probabilities"], traffic=traffic, unseen=answer.get("unseen"),
                                  variant=variants[i], shadow=shadow[i] if shadow else None)

    # ---- the shadow thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self._drain()

    def _drain(self) -> None:
        while self._queue:
            items = []
            size = 0
            while self._queue and size < _SHADOW_BATCH:
                items.append(self._queue.popleft())
                size += len(items[-1][1])
            with self._queued_lock:
                self._queued -= size
            self._score_shadow(items)
            # Give the GIL back at once: otherwise the event loop, woken by a request, waits for the
            # interpreter's switch interval (5 ms) while this thread runs Python (measured: 4x less throughput)
            time.sleep(0)

    def _score_shadow(self, items: list[tuple[Any, ...]]) -> None:
        records = [r for item in items for r in item[1]]
        answers = self._score(SHADOW, self.shadow, records) if self.shadow is not None else None
        at = 0
        for timestamp, recs, out, variants, traffic in items:
            shadow = None
            if answers is not None:
                shadow = [{k: a[k] for k in ("model_version", "label", "probabilities")}
                          for a in answers[at:at + len(recs)]]
            at += len(recs)
            self._log(timestamp, recs, out, variants, traffic, shadow)

    def stats(self) -> dict[str, Any]:
        """Per variant: version, requests, errors, error rate, p50/p99 scoring latency (this process)."""
        versions = {CHAMPION: None, CANARY: self.canary.model_version if self.canary else None,
                    SHADOW: self.shadow.model_version if self.shadow else None}
        doc = {name: s.to_dict(versions[name]) for name, s in self.stats_by_variant.items()
               if name == CHAMPION or versions[name] is not None}
        return {"canary_fraction": self.fraction if self.canary else 0.0, "canary_key": self.key,
                "variants": doc, "shadow_queue_depth": self._queued, "shadow_dropped": self.shadow_dropped}

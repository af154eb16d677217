"""The FastAPI application of the model server: endpoints, validation errors, metrics and logging.

`create_app()` builds the app for one verified model. Endpoints (docs/serving.md has the contract):
GET /health, GET /ready, POST /predict, POST /predict/batch, POST /feedback, GET /model, GET /metrics.

Hot path: the request endpoints are plain functions from body bytes to (status, body bytes) in
`ServingService`. FastAPI routes call them (and document them in OpenAPI), but in production a small
ASGI middleware in front of the router calls them directly: Starlette's routing and Request/Response
objects cost about 40% of single-row throughput on a 2-core machine (measured, see docs/serving.md).
Both ways run the same code; tests exercise both. Bodies are parsed with msgspec and validated by
hand against the model's feature lists and data contract; client mistakes are 4xx with {"detail": ...},
never a 500 (a body nested deeper than the decoder's recursion limit included). With CT_API_TOKEN the POST
endpoints require `Authorization: Bearer <token>` (compared in constant time); a prediction takes one
feedback label (a second one is a 409).
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ml.predlog import TRAFFIC_HEADER, PredictionLogWriter, feedback_ids
from ml.serving.metrics import Metrics
from ml.serving.model import LoadedModel, ModelLoadError, RequestError, Scorer, resolve_model
from ml.serving.settings import Settings
from ml.serving.variants import Variants

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

JSON_TYPE = b"application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[bytes], tuple[int, bytes]]
#: The request's X-CT-Traffic header (e.g. "smoke" from a deploy's smoke test), logged with its predictions.
TRAFFIC: contextvars.ContextVar[str | None] = contextvars.ContextVar("ct_traffic", default=None)


def configure_logging(level: str = "INFO") -> None:
    """One line per record on stderr (uvicorn's own loggers propagate here; access log is off)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


class ServingService:
    """Everything one worker process serves: scorer, prediction log, metrics, readiness."""

    def __init__(self, settings: Settings, loaded: LoadedModel) -> None:
        import msgspec

        self.settings = settings
        #: (model, scorer) swapped as one reference when the followed alias moves; request handlers read
        #: it once, so a request is validated and scored by the same model version
        self._current: tuple[LoadedModel, Scorer] = (loaded, self._scorer(loaded))
        self._refused_version: str | None = None
        self._follow_stop = threading.Event()
        self._follow_thread: threading.Thread | None = None
        self.writer = (PredictionLogWriter(settings.prediction_log_dir, queue_size=settings.log_queue_size)
                       if settings.prediction_log_dir else None)
        self.metrics = Metrics(
            model_info={"name": self.model_name, "version": loaded.version, "sha256": loaded.sha256},
            live=self._live_metrics)
        #: a shadow and/or canary model (CT_SHADOW_* / CT_CANARY_*); None keeps the handlers' plain path
        self.variants = Variants.from_settings(settings, self.scorer, self.writer, self.metrics)
        self.ready = False
        self.state = "starting"
        #: prediction ids that have a feedback label (seeded from the log at start): a second label is a 409
        self.labelled: set[str] = set()
        self._token = settings.api_token.encode() if settings.api_token else None
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder().decode
        self._decode_error = msgspec.DecodeError
        self._range_error = msgspec.ValidationError
        #: (method, path) -> handler, served by HotPathMiddleware without the router
        self.hot: dict[tuple[str, str], Handler] = {
            ("POST", "/predict"): self.predict, ("POST", "/predict/batch"): self.predict_batch,
            ("POST", "/feedback"): self.feedback,
        }

    def _scorer(self, loaded: LoadedModel) -> Scorer:
        return Scorer(loaded.model, loaded.version, self.settings.unseen_category)

    def auth_problem(self, authorization: bytes | None) -> RequestError | None:
        """None when the request may proceed: no token configured, or `Authorization: Bearer <the token>`."""
        if self._token is None:
            return None
        if not authorization:
            return RequestError(401, "missing bearer token: send the header 'Authorization: Bearer <token>' "
                                     "(the server requires CT_API_TOKEN)")
        scheme, _, given = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            return RequestError(401, "wrong bearer token (Authorization: Bearer <token>, CT_API_TOKEN)")
        return None

    @property
    def loaded(self) -> LoadedModel:
        return self._current[0]

    @property
    def scorer(self) -> Scorer:
        return self._current[1]

    @property
    def model_name(self) -> str:
        return self.loaded.model.meta.get("name", "model")

    def _live_metrics(self) -> dict[str, dict[str, float]]:
        w = self.writer
        if w is None:
            return {"counters": {}, "gauges": {"ct_prediction_log_queue_depth": 0}}
        return {"counters": {"ct_prediction_log_written_total": w.written,
                             "ct_prediction_log_dropped_total": w.dropped,
                             "ct_prediction_log_write_errors_total": w.write_errors},
                "gauges": {"ct_prediction_log_queue_depth": w.depth}}

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        t0 = time.perf_counter()
        self.scorer.warm_up()
        if self.writer is not None:
            self.writer.start()
            self.labelled = feedback_ids(self.writer.root)
        if self.variants is not None:
            self.variants.start()
        self.metrics.start()
        if self.settings.follow_s:
            self._follow_thread = threading.Thread(target=self._follow, name="model-follow", daemon=True)
            self._follow_thread.start()
        self.ready, self.state = True, "ready"
        model = self.loaded.model
        log.info("ready: %s version %s (sha256 %s, %s) warmed up in %.0f ms; %d numeric + %d categorical "
                 "features, classes %s, threshold %s; prediction log %s", self.model_name, self.loaded.version,
                 self.loaded.sha256, self.loaded.path, (time.perf_counter() - t0) * 1000, len(model.numeric),
                 len(model.categorical), model.classes, model.threshold,
                 self.settings.prediction_log_dir or "disabled (CT_PREDICTION_LOG_DIR not set)")

    def stop(self) -> None:
        self.ready, self.state = False, "shutting down"
        self._follow_stop.set()
        if self._follow_thread is not None:
            self._follow_thread.join(10)
        if self.variants is not None:
            self.variants.stop()  # the shadow's queued lines go to the log before it closes
        if self.writer is not None:
            self.writer.close()
        self.metrics.stop()

    # ---- following an alias (CT_MODEL_FOLLOW_S) --------------------------------------------------

    def _follow(self) -> None:
        uri = self.settings.alias_uri
        log.info("following %s: checking every %d s", uri, self.settings.follow_s)
        while not self._follow_stop.wait(self.settings.follow_s):
            try:
                self.refresh()
            except Exception as exc:  # a registry hiccup must never take the serving model down
                log.warning("following %s: check failed, still serving version %s: %s: %s", uri,
                            self.loaded.version, type(exc).__name__, " ".join(str(exc).split())[:300])

    def refresh(self) -> bool:
        """Switch to the version the followed alias names now, if it moved; True when switched.

        The new version is fetched and sha256-verified exactly like at start-up, and warmed up before it
        takes traffic. One that cannot be loaded (tampered, external data, or the registry failing
        mid-download) leaves the current version serving; it is logged and counted once, and tried again
        at the next check, so a passing registry error does not pin the old version.
        """
        from ml.registry import version_by_alias
        from ml.tracking import mlflow_client

        uri = self.settings.alias_uri
        if uri is None:
            return False
        name, _, alias = replace(self.settings, model_uri=uri).registry_ref or ("", None, None)
        found = version_by_alias(mlflow_client(), name, alias)
        if found is None:
            log.warning("following %s: the alias is not set, still serving version %s", uri, self.loaded.version)
            return False
        version = str(found.version)
        before = self.loaded.version
        if version == before:
            return False
        pinned = f"models:/{name}/{version}"  # exactly the version looked up, even if the alias moves again
        try:
            loaded = resolve_model(replace(self.settings, model_uri=pinned, expected_sha256=None, model_version=None))
        except ModelLoadError as exc:
            if version != self._refused_version:
                self._refused_version = version
                self.metrics.inc("ct_model_switch_refused_total")
                log.error("following %s: version %s refused, still serving version %s: %s", uri, version, before,
                          exc)
            return False
        scorer = self._scorer(loaded)
        scorer.warm_up()
        self._current = (loaded, scorer)
        self._refused_version = None
        self.metrics.set_model_info({"name": self.model_name, "version": loaded.version, "sha256": loaded.sha256})
        self.metrics.inc("ct_model_switches_total")
        log.info("following %s: switched from version %s to version %s (sha256 %s)", uri, before, loaded.version,
                 loaded.sha256)
        return True

    # ---- request handlers: bytes in, (status, bytes) out ----------------------------------------

    def call(self, handler: Handler, body: bytes) -> tuple[int, bytes]:
        """Run a handler; client mistakes become their 4xx, anything else a logged 500."""
        try:
            return handler(body)
        except RequestError as exc:
            return exc.status, self._encode({"detail": exc.detail})
        except RecursionError:  # msgspec's decoder (or a repr) on a body nested ~1000 levels deep
            return 400, self._encode({"detail": "JSON nested too deeply: the server accepts objects of features, "
                                                "{\"records\": [...]} or {\"items\": [...]}, nothing deeper"})
        except Exception:
            log.exception("unexpected error in %s", getattr(handler, "__name__", handler))
            return 500, self._encode({"detail": "internal server error (logged by the server)"})

    def _json(self, body: bytes) -> Any:
        if not body:
            raise RequestError(400, "empty request body: send a JSON object")
        try:
            return self._decode(body)
        except self._range_error as exc:  # a number too large for a double (1e400)
            raise RequestError(422, f"invalid JSON value: {exc}") from None
        except self._decode_error as exc:
            raise RequestError(400, f"malformed JSON: {exc}") from None
        except UnicodeDecodeError as exc:  # msgspec raises it for invalid UTF-8 inside strings
            raise RequestError(400, f"request body is not valid UTF-8 (byte {exc.start})") from None

    def predict(self, body: bytes) -> tuple[int, bytes]:
        record = self._json(body)
        scorer = self.scorer
        unseen = scorer.check_record(record)
        if self.variants is not None:
            return 200, self._encode(self.variants.serve(scorer, [record], TRAFFIC.get(),
                                                         None if unseen is None else [unseen])[0])
        timestamp, out = scorer.predict([record], None if unseen is None else [unseen])
        self._record(scorer.model_version, timestamp, [record], out)
        return 200, self._encode(out[0])

    def predict_batch(self, body: bytes) -> tuple[int, bytes]:
        doc = self._json(body)
        if type(doc) is not dict or set(doc) != {"records"}:
            raise RequestError(422, 'expected a JSON object {"records": [ {feature: value, ...}, ... ]}')
        records = doc["records"]
        if type(records) is not list:
            raise RequestError(422, "records must be a JSON array of objects")
        if not records:
            raise RequestError(422, "records is empty: send between 1 and "
                                    f"{self.settings.max_batch} records")
        if len(records) > self.settings.max_batch:
            raise RequestError(413, f"batch of {len(records)} records exceeds the limit of "
                                    f"{self.settings.max_batch} (CT_MAX_BATCH): split it")
        problems: list[str] = []
        scorer = self.scorer
        unseen: list[list[str] | None] = []
        for i, record in enumerate(records):
            try:
                unseen.append(scorer.check_record(record, f"records[{i}]: "))
            except RequestError as exc:
                problems.append(exc.detail)
                if len(problems) == 5:
                    break
        if problems:
            raise RequestError(422, "; ".join(problems))
        if self.variants is not None:
            out = self.variants.serve(scorer, records, TRAFFIC.get(), unseen if any(unseen) else None)
            return 200, self._encode({"model_version": scorer.model_version, "predictions": out})
        timestamp, out = scorer.predict(records, unseen if any(unseen) else None)
        self._record(scorer.model_version, timestamp, records, out)
        return 200, self._encode({"model_version": scorer.model_version, "predictions": out})

    def _record(self, version: str, timestamp: float, records: list[dict[str, Any]],
                out: list[dict[str, Any]]) -> None:
        self.metrics.count_predictions([result["label"] for result in out])
        writer = self.writer
        if writer is None:
            return
        traffic, variant = TRAFFIC.get(), self.settings.variant
        for record, result in zip(records, out, strict=True):
            writer.log_prediction(result["prediction_id"], timestamp, version, record, result["label"],
                                  result["probabilities"], traffic, result.get("unseen"), variant)

    def feedback(self, body: bytes) -> tuple[int, bytes]:
        doc = self._json(body)
        if type(doc) is dict and "items" in doc:
            if set(doc) != {"items"}:
                raise RequestError(422, 'send either {"prediction_id", "label"} or {"items": [...]}, not both')
            items = doc["items"]
            if type(items) is not list or not items:
                raise RequestError(422, "items must be a non-empty JSON array of {prediction_id, label}")
            if len(items) > self.settings.max_batch:
                raise RequestError(413, f"{len(items)} feedback items exceed the limit of "
                                        f"{self.settings.max_batch} (CT_MAX_BATCH): split them")
            checked = [self.scorer.check_feedback(item, f"items[{i}]: ") for i, item in enumerate(items)]
        else:
            checked = [self.scorer.check_feedback(doc)]
        if self.writer is None:
            raise RequestError(503, "feedback cannot be stored: prediction logging is disabled on this server "
                                    "(set CT_PREDICTION_LOG_DIR)")
        self._refuse_relabel([pid for pid, _ in checked])
        now = time.time()
        stored = 0
        for pid, label in checked:
            if self.writer.log_feedback(pid, now, label):
                self.labelled.add(pid)
                stored += 1
        self.metrics.inc("ct_feedback_total", stored)
        if stored < len(checked):
            raise RequestError(503, f"prediction log queue is full: {len(checked) - stored} of {len(checked)} "
                                    "feedback item(s) not stored; retry later")
        return 202, self._encode({"accepted": stored})

    def _refuse_relabel(self, ids: list[str]) -> None:
        """409 naming the ids that already have a label (or appear twice in the request): nothing is stored."""
        seen: set[str] = set()
        again = [pid for pid in ids if pid in self.labelled or pid in seen or seen.add(pid)]
        if again:
            self.metrics.inc("ct_feedback_conflicts_total", len(again))
            raise RequestError(409, f"prediction(s) {sorted(set(again))[:5]} already have a feedback label: a "
                                    "prediction takes one label, a second is never stored (nothing of this "
                                    "request was stored)")

    # ---- read-only endpoints ---------------------------------------------------------------------

    def model_document(self) -> dict[str, Any]:
        loaded, scorer = self._current
        model = loaded.model
        return {"name": self.model_name, "version": loaded.version, "sha256": loaded.sha256,
                "features": {"numeric": list(model.numeric), "categorical": list(model.categorical)},
                "classes": list(scorer.classes), "threshold": scorer.threshold}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        # `server_pid`: which server process answered (the local deployer tells two servers of a port apart)
        body = {"model_version": self.loaded.version, "server_pid": server_pid()}
        if self.ready:
            return 200, {"status": "ready", **body}
        return 503, {"status": self.state, **body}

    def request_schema(self) -> dict[str, Any]:
        """JSON schema of one record, from the model's features (for the OpenAPI docs)."""
        props = {n: {"type": "number"} for n in self.scorer.numeric}
        props |= {n: {"type": ["string", "null"], "description": "null means missing"}
                  for n in self.scorer.categorical}
        return {"type": "object", "properties": props, "required": list(self.scorer.features),
                "additionalProperties": False}


# ---- ASGI plumbing -------------------------------------------------------------------------------

def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _content_type_problem(value: bytes | None) -> str | None:
    """None when the body may be parsed as JSON (no Content-Type counts as JSON)."""
    if value is None:
        return None
    media = value.split(b";", 1)[0].strip().lower()
    if media == JSON_TYPE or media.endswith(b"+json"):
        return None
    return f"unsupported Content-Type {media.decode('latin-1')!r}: send application/json"


def _length_problem(value: bytes | None, limit: int) -> RequestError | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return RequestError(400, "invalid Content-Length header")
    if length > limit:
        return RequestError(413, f"request body of {length} bytes exceeds the limit of {limit} (CT_MAX_BODY_BYTES)")
    return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes (CT_MAX_BODY_BYTES)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class HotPathMiddleware:
    """Serves the POST endpoints straight from ASGI messages and times every request for /metrics."""

    def __init__(self, app: ASGIApp, service: ServingService, fast_path: bool = True) -> None:
        self.app = app
        self.service = service
        self.fast_path = fast_path
        self.routes: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        handler = self.service.hot.get((scope["method"], path)) if self.fast_path else None
        if handler is not None:
            status = await self._serve(handler, scope, receive, send)
            self.service.metrics.observe(path, status, time.perf_counter() - start)
            return
        status_box = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if self.routes is None:
                self.routes = frozenset(getattr(r, "path", "") for r in scope["app"].routes)
            endpoint = path if path in self.routes else "other"
            self.service.metrics.observe(endpoint, status_box[0], time.perf_counter() - start)

    async def _serve(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> int:
        service = self.service
        problem = _content_type_problem(_header(scope, b"content-type"))
        error = service.auth_problem(_header(scope, b"authorization")) or (
            RequestError(415, problem) if problem else _length_problem(
                _header(scope, b"content-length"), service.settings.max_body_bytes))
        if error is None:
            try:
                body = await _read_body(receive, service.settings.max_body_bytes)
            except RequestError as exc:
                error = exc
            except ConnectionResetError:
                return 499  # nginx's "client closed request": nothing to answer
        if error is not None:
            status, payload = error.status, service._encode({"detail": error.detail})
        else:
            traffic = _header(scope, TRAFFIC_HEADER.encode())
            token = TRAFFIC.set(traffic.decode("latin-1")[:32] if traffic else None)
            try:
                status, payload = service.call(handler, body)
            finally:
                TRAFFIC.reset(token)
        headers = [(b"content-type", JSON_TYPE), (b"content-length", str(len(payload)).encode())]
        if error is not None and status in (401, 413):
            headers.append((b"connection", b"close"))  # the rest of the body was not read
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        return status


async def _route_call(service: ServingService, handler: Handler, request: Request) -> Response:
    """The same handler as the middleware's, through FastAPI's Request (used without the fast path)."""
    problem = _content_type_problem(request.headers.get("content-type", "").encode() or None)
    error = service.auth_problem((request.headers.get("authorization") or "").encode("latin-1") or None) or (
        RequestError(415, problem) if problem else _length_problem(
            (request.headers.get("content-length") or "").encode() or None, service.settings.max_body_bytes))
    if error is None:
        try:
            body = await _read_body(request.receive, service.settings.max_body_bytes)
        except RequestError as exc:
            error = exc
    if error is not None:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse({"detail": error.detail}, status_code=error.status, headers=headers)
    token = TRAFFIC.set((request.headers.get(TRAFFIC_HEADER) or "")[:32] or None)
    try:
        status, payload = service.call(handler, body)
    finally:
        TRAFFIC.reset(token)
    return Response(payload, status_code=status, media_type="application/json")


#: set by the multi-worker launcher to its own pid: a worker that sees it ends when that process ends
SUPERVISOR_ENV = "CT_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def server_pid(environ: Mapping[str, str] = os.environ) -> int:
    """The pid of the server this process is: its supervisor's for a worker, else its own."""
    raw = environ.get(SUPERVISOR_ENV, "")
    return int(raw) if raw.isdigit() else os.getpid()


def die_with_supervisor(environ: Mapping[str, str] = os.environ) -> None:
    """In a worker process: end (SIGTERM, so the prediction log drains) when the supervisor that spawned it
    ends, however it ends. A SIGKILLed supervisor cannot stop its workers, and they would go on serving a
    version nothing records. Linux: the kernel's parent-death signal; elsewhere and as a backstop a daemon
    thread that polls the parent pid each second."""
    raw = environ.get(SUPERVISOR_ENV)
    if not raw or not raw.isdigit() or int(raw) == os.getpid():
        return
    supervisor = int(raw)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(1.0)
        log.warning("supervisor pid %d is gone: this worker (pid %d) stops", supervisor, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="ct-supervisor-watch", daemon=True).start()


def create_app(settings: Settings | None = None, loaded: LoadedModel | None = None,
               fast_path: bool = True) -> FastAPI:
    """The ASGI app for one model. Without arguments (uvicorn `--factory`, one call per worker
    process) settings come from CT_* variables and the model is loaded and verified here."""
    if settings is None:
        die_with_supervisor()
        settings = Settings.from_env(os.environ)
        configure_logging(settings.log_level)
    if loaded is None:
        loaded = resolve_model(settings)
    service = ServingService(settings, loaded)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title=f"ct-serving: {service.model_name}", version=loaded.version, lifespan=lifespan,
                  description="ONNX classifier behind FastAPI; see docs/serving.md.")
    app.state.service = service
    _routes(app, service, settings.max_batch)
    app.add_middleware(HotPathMiddleware, service=service, fast_path=fast_path)
    return app


def _routes(app: FastAPI, service: ServingService, max_batch: int) -> None:
    """The endpoints (the POST ones also have the ASGI fast path of HotPathMiddleware) and their schemas."""
    schema = service.request_schema()
    one = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
    many = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["records"], "additionalProperties": False,
        "properties": {"records": {"type": "array", "items": schema, "minItems": 1, "maxItems": max_batch}}}}}}}

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return JSONResponse({"detail": "internal server error (logged by the server)"}, status_code=500)

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model loaded and warmed up")
    async def ready() -> JSONResponse:
        status, body = service.readiness()
        return JSONResponse(body, status_code=status)

    @app.post("/predict", summary="Score one record", openapi_extra=one)
    async def predict(request: Request) -> Response:
        return await _route_call(service, service.predict, request)

    @app.post("/predict/batch", summary="Score 1..CT_MAX_BATCH records", openapi_extra=many)
    async def predict_batch(request: Request) -> Response:
        return await _route_call(service, service.predict_batch, request)

    @app.post("/feedback", status_code=202, summary="Report the true label of earlier predictions")
    async def feedback(request: Request) -> Response:
        return await _route_call(service, service.feedback, request)

    @app.get("/model", summary="The model being served")
    async def model() -> dict[str, Any]:
        return service.model_document()

    @app.get("/variants", summary="Canary and shadow: requests, errors, latency per variant (this worker)")
    async def variants() -> dict[str, Any]:
        return service.variants.stats() if service.variants is not None else {"variants": {}}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=METRICS_TYPE)


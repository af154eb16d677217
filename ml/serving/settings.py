"""Serving configuration: environment variables (the container contract) and the equivalent CLI flags.

Every knob is an environment variable `CT_*`; `python -m ml.serving --flag` overrides it. Values are
validated here, once, with messages that name the variable, so a misconfigured pod fails at start-up
with one readable line instead of at the first request. See docs/serving.md for the table.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from ml.errors import CTError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8808
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_MODELS_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_.-]+))$")


class SettingsError(CTError):
    """The serving configuration (environment or flags) is invalid."""


@dataclass(frozen=True)
class Settings:
    """The validated serving configuration."""

    model_uri: str
    expected_sha256: str | None = None
    model_version: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = 1
    prediction_log_dir: Path | None = None
    max_batch: int = 1000
    max_body_bytes: int = 1 << 20
    log_queue_size: int = 65_536
    log_level: str = "INFO"
    model_cache_dir: Path | None = None
    metrics_dir: Path | None = None
    follow_s: int = 0
    follow_uri: str | None = None
    timeout_keep_alive_s: int = 5
    limit_concurrency: int = 1000
    max_incomplete_event_bytes: int = 16_384
    #: bind the port with SO_REUSEPORT so the next version can start beside this one (ml.serving.handoff)
    reuse_port: bool = False
    #: a private loopback port this server also answers on: its smoke test, before it takes the traffic
    smoke_port: int | None = None
    #: a categorical value the model never saw: `refuse` (422 naming column and value) or `mark` (accepted,
    #: marked `unseen` in the prediction log and the response)
    unseen_category: Literal["refuse", "mark"] = "refuse"
    #: bearer token /predict, /predict/batch and /feedback require (None: no authentication)
    api_token: str | None = field(default=None, repr=False)
    #: the file the token was read from (passed to worker processes instead of the token)
    api_token_file: Path | None = None
    #: safe rollout (ml.serving.variants): a challenger scored in shadow, a canary answering a fraction
    shadow_model_path: Path | None = None
    shadow_model_sha256: str | None = None
    shadow_model_version: str | None = None
    canary_model_path: Path | None = None
    canary_model_sha256: str | None = None
    canary_model_version: str | None = None
    canary_fraction: float = 0.0
    canary_key: str | None = None
    variant: str | None = None

    @property
    def alias_uri(self) -> str | None:
        """The models:/<name>@<alias> URI to follow (CT_MODEL_FOLLOW_S), None when there is none."""
        for uri in (self.follow_uri, self.model_uri):
            match = _MODELS_URI_RE.match(uri or "")
            if match is not None and match["alias"]:
                return uri
        return None

    @property
    def registry_ref(self) -> tuple[str, str | None, str | None] | None:
        """(name, version, alias) for a `models:/` URI, None for a local file."""
        match = _MODELS_URI_RE.match(self.model_uri)
        if match is None:
            return None
        return match["name"], match["version"], match["alias"]

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Settings from CT_* environment variables."""
        return _build({key: environ.get(env) for key, (env, _flag, _help) in _FIELDS.items()})

    @classmethod
    def from_args(cls, argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
        """Settings from the environment, overridden by command-line flags."""
        parser = build_parser()
        args = parser.parse_args(argv)
        raw = {key: environ.get(env) for key, (env, _flag, _help) in _FIELDS.items()}
        raw |= {key: value for key, value in vars(args).items() if value is not None}
        return _build(raw)

    def to_env(self) -> dict[str, str]:
        """The CT_* variables that reproduce these settings (for worker processes)."""
        values = {
            "model_uri": self.model_uri, "expected_sha256": self.expected_sha256,
            "model_version": self.model_version, "host": self.host, "port": self.port,
            "workers": self.workers, "prediction_log_dir": self.prediction_log_dir,
            "max_batch": self.max_batch, "max_body_bytes": self.max_body_bytes,
            "log_queue_size": self.log_queue_size, "log_level": self.log_level,
            "model_cache_dir": self.model_cache_dir, "metrics_dir": self.metrics_dir,
            "follow_s": self.follow_s or None, "follow_uri": self.follow_uri,
            "timeout_keep_alive_s": self.timeout_keep_alive_s, "limit_concurrency": self.limit_concurrency,
            "max_incomplete_event_bytes": self.max_incomplete_event_bytes,
            "reuse_port": int(self.reuse_port), "smoke_port": self.smoke_port,
            "unseen_category": self.unseen_category, "api_token_file": self.api_token_file,
            "api_token": None if self.api_token_file else self.api_token,
            **{k: getattr(self, k) for k in _VARIANT_FIELDS}, "canary_fraction": self.canary_fraction or None,
        }
        return {_FIELDS[k][0]: str(v) for k, v in values.items() if v is not None}

    def with_model(self, path: Path, sha256: str, version: str) -> Settings:
        """A copy pointing at a resolved, verified local model file."""
        return replace(self, model_uri=str(path), expected_sha256=sha256, model_version=version,
                       follow_uri=self.alias_uri if self.follow_s else None)


#: field -> (environment variable, CLI flag or None, help)
_FIELDS: dict[str, tuple[str, str | None, str]] = {
    "model_uri": ("CT_MODEL_URI", "--model-uri",
                  "local .onnx path, models:/<name>/<version> or models:/<name>@<alias> (required)"),
    "expected_sha256": ("CT_MODEL_SHA256", "--expected-sha256",
                        "sha256 the model file must have; start-up is refused on a mismatch"),
    "model_version": ("CT_MODEL_VERSION", "--model-version",
                      "version string shown in responses (models:/ URIs: taken from the registry)"),
    "host": ("CT_HOST", "--host", "bind address (default 127.0.0.1)"),
    "port": ("CT_PORT", "--port", f"port (default {DEFAULT_PORT})"),
    "workers": ("CT_WORKERS", "--workers", "worker processes (default 1)"),
    "prediction_log_dir": ("CT_PREDICTION_LOG_DIR", "--prediction-log-dir",
                           "root of the prediction log (default: logging disabled)"),
    "max_batch": ("CT_MAX_BATCH", "--max-batch", "most records per /predict/batch (default 1000)"),
    "max_body_bytes": ("CT_MAX_BODY_BYTES", "--max-body-bytes", "largest request body (default 1048576)"),
    "log_queue_size": ("CT_LOG_QUEUE_SIZE", None, "prediction-log queue capacity (default 65536)"),
    "log_level": ("CT_LOG_LEVEL", "--log-level", "DEBUG, INFO, WARNING or ERROR (default INFO)"),
    "model_cache_dir": ("CT_MODEL_CACHE_DIR", None, "where models:/ downloads go (default $CT_HOME/serving)"),
    "metrics_dir": ("CT_METRICS_DIR", None,
                    "with CT_WORKERS > 1: where each start's fresh PROMETHEUS_MULTIPROC_DIR is made (default: temp)"),
    "follow_s": ("CT_MODEL_FOLLOW_S", "--follow-s",
                 "with CT_MODEL_URI=models:/<name>@<alias>: every N seconds, check where the alias points and "
                 "switch to that version once it is fetched, verified and warmed up (default 0: off)"),
    "follow_uri": ("CT_MODEL_FOLLOW_URI", None, "the alias URI workers follow (set by the launcher)"),
    "timeout_keep_alive_s": ("CT_TIMEOUT_KEEP_ALIVE_S", "--timeout-keep-alive",
                             "seconds an idle keep-alive connection stays open (default 5)"),
    "limit_concurrency": ("CT_LIMIT_CONCURRENCY", "--limit-concurrency",
                          "most connections and requests in flight per worker; beyond it: 503 (default 1000)"),
    "max_incomplete_event_bytes": ("CT_MAX_INCOMPLETE_EVENT_BYTES", None,
                                   "largest request line + headers the h11 parser buffers (default 16384)"),
    "reuse_port": ("CT_REUSE_PORT", "--reuse-port",
                   "1: bind the port with SO_REUSEPORT, so a new version can start beside this server and take "
                   "its traffic without a gap (Linux; set by the local deploy target; default 0)"),
    "smoke_port": ("CT_SMOKE_PORT", "--smoke-port",
                   "a private loopback port this server answers on too (its smoke test before it takes the "
                   "traffic; default: none)"),
    "unseen_category": ("CT_UNSEEN_CATEGORY", "--unseen-category",
                        "a categorical value the model never saw: refuse (422, default) or mark (accepted, marked "
                        "`unseen` in the prediction log)"),
    "api_token": ("CT_API_TOKEN", None,
                  "bearer token /predict, /predict/batch and /feedback require (default: none, no authentication)"),
    "api_token_file": ("CT_API_TOKEN_FILE", "--api-token-file",
                       "file holding the bearer token (a mounted secret); wins over CT_API_TOKEN"),
    "shadow_model_path": ("CT_SHADOW_MODEL_PATH", "--shadow-model-path",
                          "a challenger .onnx scored in shadow on every request, after the answer (default: none)"),
    "shadow_model_sha256": ("CT_SHADOW_MODEL_SHA256", "--shadow-model-sha256", "sha256 the shadow file must have"),
    "shadow_model_version": ("CT_SHADOW_MODEL_VERSION", "--shadow-model-version", "the shadow model's version"),
    "canary_model_path": ("CT_CANARY_MODEL_PATH", "--canary-model-path",
                          "a canary .onnx answering CT_CANARY_FRACTION of the requests (default: none)"),
    "canary_model_sha256": ("CT_CANARY_MODEL_SHA256", "--canary-model-sha256", "sha256 the canary file must have"),
    "canary_model_version": ("CT_CANARY_MODEL_VERSION", "--canary-model-version", "the canary's version"),
    "canary_fraction": ("CT_CANARY_FRACTION", "--canary-fraction",
                        "share of the requests the canary answers, 0 < f < 1 (with CT_CANARY_MODEL_PATH)"),
    "canary_key": ("CT_CANARY_KEY", "--canary-key",
                   "feature whose value routes a request (stable per key); default: the prediction id"),
    "variant": ("CT_VARIANT", None, "logged as the prediction log's `variant` (a canary Deployment's pods)"),
}
#: the optional text/path settings of safe rollout, carried to the workers as they are
_VARIANT_FIELDS = ("shadow_model_path", "shadow_model_sha256", "shadow_model_version", "canary_model_path",
                   "canary_model_sha256", "canary_model_version", "canary_key", "variant")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml.serving",
        description="Serve an ONNX classifier over HTTP. Every flag has a CT_* environment variable; "
                    "the flag wins when both are set.")
    for key, (env, flag, help_text) in _FIELDS.items():
        if flag:
            parser.add_argument(flag, dest=key, default=None, help=f"{help_text} [env {env}]")
    return parser


def _int(raw: dict[str, object], key: str, low: int, high: int) -> int | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    env = _FIELDS[key][0]
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{env}={value!r}: expected an integer") from None
    if not low <= number <= high:
        raise SettingsError(f"{env}={number}: must be between {low} and {high}")
    return number


def _text(raw: dict[str, object], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _build(raw: dict[str, object]) -> Settings:
    uri = _text(raw, "model_uri")
    if not uri:
        raise SettingsError("CT_MODEL_URI (or --model-uri) is required: a local .onnx path, "
                            "models:/<name>/<version> or models:/<name>@<alias>")
    if uri.startswith("models:/") and not _MODELS_URI_RE.match(uri):
        raise SettingsError(f"CT_MODEL_URI={uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    sha = _text(raw, "expected_sha256")
    if sha is not None:
        sha = sha.lower()
        if not _SHA_RE.match(sha):
            raise SettingsError(f"CT_MODEL_SHA256={sha!r}: expected 64 hexadecimal characters")
    level = (_text(raw, "log_level") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"CT_LOG_LEVEL={level!r}: expected DEBUG, INFO, WARNING or ERROR")
    optional_path = {k: Path(v) if (v := _text(raw, k)) else None
                     for k in ("prediction_log_dir", "model_cache_dir", "metrics_dir")}
    defaults = Settings(model_uri=uri)
    ints = {
        "port": _int(raw, "port", 1, 65535),
        "workers": _int(raw, "workers", 1, 64),
        "max_batch": _int(raw, "max_batch", 1, 1_000_000),
        "max_body_bytes": _int(raw, "max_body_bytes", 1024, 1 << 30),
        "log_queue_size": _int(raw, "log_queue_size", 1, 10_000_000),
        "follow_s": _int(raw, "follow_s", 0, 86_400),
        "timeout_keep_alive_s": _int(raw, "timeout_keep_alive_s", 1, 3600),
        "limit_concurrency": _int(raw, "limit_concurrency", 1, 1_000_000),
        "max_incomplete_event_bytes": _int(raw, "max_incomplete_event_bytes", 1024, 1 << 24),
        "smoke_port": _int(raw, "smoke_port", 1, 65535),
    }
    settings = Settings(
        follow_uri=_text(raw, "follow_uri"),
        model_uri=uri.removeprefix("file://"),
        expected_sha256=sha,
        model_version=_text(raw, "model_version"),
        host=_text(raw, "host") or defaults.host,
        log_level=level,
        **{k: v if v is not None else getattr(defaults, k) for k, v in ints.items()},
        **optional_path,
    )
    unseen = (_text(raw, "unseen_category") or "refuse").lower()
    if unseen not in ("refuse", "mark"):
        raise SettingsError(f"CT_UNSEEN_CATEGORY={unseen!r}: expected refuse or mark")
    token_file, token = _token(raw)
    settings = replace(settings, reuse_port=_reuse_port(raw), unseen_category=unseen, api_token=token,  # type: ignore[arg-type]
                       api_token_file=token_file,
                       **_variant_settings(raw))
    if settings.follow_s and settings.alias_uri is None:
        raise SettingsError(f"CT_MODEL_FOLLOW_S={settings.follow_s} needs an alias to follow: set "
                            f"CT_MODEL_URI=models:/<name>@<alias> (got {uri!r})")
    return settings


def _reuse_port(raw: dict[str, object]) -> bool:
    from ml.serving import handoff

    reuse = (_text(raw, "reuse_port") or "0").lower()
    if reuse not in ("0", "1", "true", "false"):
        raise SettingsError(f"CT_REUSE_PORT={reuse!r}: expected 1 or 0")
    if reuse in ("1", "true") and not handoff.supported():
        raise SettingsError(f"CT_REUSE_PORT={reuse}: steering a shared port needs Linux (this is {sys.platform})")
    return reuse in ("1", "true")


def _token(raw: dict[str, object]) -> tuple[Path | None, str | None]:
    """(file, token) of CT_API_TOKEN_FILE / CT_API_TOKEN: the file wins; an empty token is refused."""
    file = Path(text) if (text := _text(raw, "api_token_file")) else None
    if file is None:
        value = raw.get("api_token")
        if value is not None and not str(value).strip():
            raise SettingsError("CT_API_TOKEN is set but empty: unset it (no authentication) or set a token")
        return None, _text(raw, "api_token")
    try:
        token = file.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"CT_API_TOKEN_FILE={file}: cannot read it: {exc.strerror or exc}") from None
    if not token:
        raise SettingsError(f"CT_API_TOKEN_FILE={file} is empty: write the token into it")
    return file, token


def _variant_settings(raw: dict[str, object]) -> dict[str, object]:
    """The safe-rollout settings: each model given needs its sha256 (it is verified like the champion)."""
    out: dict[str, object] = {k: _text(raw, k) for k in _VARIANT_FIELDS}
    for kind in ("shadow", "canary"):
        path, sha = out[f"{kind}_model_path"], out[f"{kind}_model_sha256"]
        env = kind.upper()
        if path is None:
            if sha is not None:
                raise SettingsError(f"CT_{env}_MODEL_SHA256 is set without CT_{env}_MODEL_PATH")
            continue
        out[f"{kind}_model_path"] = Path(str(path))
        if sha is None or not _SHA_RE.match(str(sha).lower()):
            raise SettingsError(f"CT_{env}_MODEL_PATH needs CT_{env}_MODEL_SHA256 (64 hexadecimal characters), "
                                f"got {sha!r}")
        out[f"{kind}_model_sha256"] = str(sha).lower()
    fraction = _text(raw, "canary_fraction")
    if fraction is not None:
        try:
            out["canary_fraction"] = float(fraction)
        except ValueError:
            raise SettingsError(f"CT_CANARY_FRACTION={fraction!r}: expected a number") from None
    has_canary = out["canary_model_path"] is not None
    if has_canary and not 0.0 < float(out.get("canary_fraction") or 0.0) < 1.0:
        raise SettingsError(f"CT_CANARY_FRACTION={fraction!r}: the canary needs a share strictly between 0 and 1")
    if not has_canary and (fraction is not None or out["canary_key"] is not None):
        raise SettingsError("CT_CANARY_FRACTION / CT_CANARY_KEY are set without CT_CANARY_MODEL_PATH")
    return out

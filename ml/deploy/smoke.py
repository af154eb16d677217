"""The smoke test every deploy target runs against a freshly rolled-out server.

Standard library only (it also runs inside the small deployer image). It checks, in order: /health
answers, /ready reports the expected version, /model reports the expected sha256, and /predict/batch
answers the sample records with well-formed probabilities that agree with the expected ones. When the
deployer's environment has CT_API_TOKEN (or CT_API_TOKEN_FILE), as the server's does, it is sent as the
bearer token.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ml.predlog import SMOKE, TRAFFIC_HEADER
from ml.result import Result

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig


@dataclass(frozen=True)
class SmokeResult(Result):
    passed: bool
    detail: str
    checks: list[str] = field(default_factory=list)
    latency_ms: float | None = None


def api_token() -> str | None:
    """The bearer token of the serving API from this process's environment (CT_API_TOKEN_FILE wins), if any."""
    path = os.environ.get("CT_API_TOKEN_FILE", "").strip()
    if path:
        with open(path) as fh:
            return fh.read().strip() or None
    return os.environ.get("CT_API_TOKEN", "").strip() or None


def _call(url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    # Marked as smoke traffic: the server logs it as such and the next window leaves it out (ml.predlog).
    headers = {"Content-Type": "application/json", TRAFFIC_HEADER: SMOKE}
    token = api_token() if data is not None else None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")[:300]


def smoke_records(frame: pd.DataFrame, config: ModelConfig, n: int) -> list[dict[str, Any]]:
    """Up to n JSON-ready feature records from a window (rows with missing numerics are skipped,
    since the server rejects them by design)."""
    from ml.data import MISSING_CATEGORY, label_key

    rows = frame.dropna(subset=list(config.features.numeric)).head(n)
    records = []
    for _, row in rows.iterrows():
        record: dict[str, Any] = {c: float(row[c]) for c in config.features.numeric}
        for c in config.features.categorical:
            key = label_key(row[c])
            record[c] = key if key else MISSING_CATEGORY
        records.append(record)
    return records


def smoke_test(base_url: str, records: list[dict[str, Any]], expected_version: str,
               expected_sha256: str | None = None, expected_proba: list[list[float]] | None = None,
               tolerance: float = 1e-4, timeout: float = 5.0) -> SmokeResult:
    """Probe a running server; never raises for a bad server, returns passed=False with the reason."""
    checks: list[str] = []
    base = base_url.rstrip("/")
    try:
        status, body = _call(f"{base}/health", timeout=timeout)
        if status != 200:
            return SmokeResult(False, f"/health answered {status}", checks)
        checks.append("health")
        status, body = _call(f"{base}/ready", timeout=timeout)
        if status != 200 or str(body.get("model_version")) != str(expected_version):
            return SmokeResult(False, f"/ready answered {status} {body!r}, expected version {expected_version}",
                               checks)
        checks.append("ready")
        if expected_sha256:
            status, body = _call(f"{base}/model", timeout=timeout)
            if status != 200 or body.get("sha256") != expected_sha256:
                return SmokeResult(False, f"/model reports sha256 {body.get('sha256') if status == 200 else status}"
                                          f", expected {expected_sha256}", checks)
            checks.append("model")
        start = time.perf_counter()
        status, body = _call(f"{base}/predict/batch", {"records": records}, timeout=timeout)
        latency = (time.perf_counter() - start) * 1000
        if status != 200:
            return SmokeResult(False, f"/predict/batch answered {status}: {body}", checks, latency)
        predictions = body.get("predictions", [])
        if len(predictions) != len(records):
            return SmokeResult(False, f"/predict/batch returned {len(predictions)} predictions for "
                                      f"{len(records)} records", checks, latency)
        for i, pred in enumerate(predictions):
            probs = list(pred["probabilities"].values())
            if any(not math.isfinite(p) or p < 0 or p > 1 for p in probs) or abs(sum(probs) - 1) > 1e-3:
                return SmokeResult(False, f"record {i}: malformed probabilities {probs}", checks, latency)
            if expected_proba is not None:
                worst = max(abs(a - b) for a, b in zip(probs, expected_proba[i], strict=True))
                if worst > tolerance:
                    return SmokeResult(False, f"record {i}: served probabilities {probs} differ from the "
                                              f"registered model's {expected_proba[i]} by {worst:.2e}",
                                       checks, latency)
        checks.append("predict")
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        return SmokeResult(False, f"smoke test error: {type(exc).__name__}: {exc}", checks)
    return SmokeResult(True, f"{len(records)} predictions in {latency:.1f} ms", checks, latency)

"""One lock per model: runs, steps and deploys of one model never interleave on one $CT_HOME.

Two mechanisms, both files under $CT_HOME/locks/:

* `<model>.lock`, an OS file lock (filelock; fcntl on Linux): held while a step runs, for the whole of
  `python -m ml run` and of an operator's rollback/deploy, and around every local deploy. The kernel
  releases it when its process dies, so a SIGKILLed run never leaves it taken. `<model>.holder.json`
  beside it says who holds it (run key, pid, since), so a process that waits for it can name the run.
* `<model>.run.json`, the run lease: the run key that owns the model from its `validate` to its run
  record. An Airflow run's steps are separate processes, so between two of its tasks the file lock is
  free; the lease keeps another run (a CLI run, the rollback DAG) from slipping its steps in between.
  A lease is stale once its owner process is gone (a run held by one process: the CLI) or, for a run
  whose steps are separate processes (Airflow), `CT_RUN_LEASE_S` (default 21600: 6 h) after its last step.

Waiting is bounded: `CT_LOCK_TIMEOUT_S` (default 30 s), then `ModelBusy` names the holder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ml.errors import CTError
from ml.procs import owner_alive, owner_tag

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_LEASE_S = 6 * 3600.0
_LOCKS: dict[str, Any] = {}


class ModelBusy(CTError):
    """Another run (or deploy) of the same model holds its lock; this one waited and gave up."""

    retryable = True


def lock_dir() -> Path:
    from ml.tracking import ct_home

    path = ct_home() / "locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _seconds(name: str, default: float) -> float:
    """Seconds from the environment variable `name` (unset or empty: `default`)."""
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise CTError(f"{name}={raw!r}: expected a number of seconds") from None


def _timeout() -> float:
    return _seconds("CT_LOCK_TIMEOUT_S", DEFAULT_TIMEOUT_S)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document))
    tmp.replace(path)


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (no holder recorded)"
    return (f"run {holder.get('run_key')!r} ({holder.get('what')}, pid {holder.get('owner', '?').split(':')[-2]}, "
            f"since {holder.get('since')})")


@contextmanager
def model_lock(model: str, *, run_key: str, what: str, timeout_s: float | None = None) -> Iterator[None]:
    """Hold the model's file lock (re-entrant in one thread): wait up to `timeout_s` (CT_LOCK_TIMEOUT_S), then
    raise ModelBusy naming the run that holds it."""
    from filelock import FileLock, Timeout

    path = lock_dir() / f"{model}.lock"
    lock = _LOCKS.setdefault(str(path), FileLock(str(path)))
    outer = not lock.is_locked
    holder_path = path.with_suffix(".holder.json")
    wait = _timeout() if timeout_s is None else timeout_s
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise ModelBusy(f"model '{model}' is busy: {_describe(_read(holder_path))} holds its lock "
                        f"({path}); {what} of run {run_key!r} waited {wait:.0f} s (CT_LOCK_TIMEOUT_S) and "
                        "gave up: retry once that run has finished") from None
    previous = _read(holder_path) if not outer else None
    try:
        if outer:
            _write(holder_path, {"run_key": run_key, "what": what, "owner": owner_tag(),
                                 "since": datetime.now(UTC).isoformat(timespec="seconds")})
        yield
    finally:
        if outer:
            holder_path.unlink(missing_ok=True)
        elif previous:
            _write(holder_path, previous)
        lock.release()


def _lease_path(model: str) -> Path:
    return lock_dir() / f"{model}.run.json"


def _lease_s() -> float:
    return _seconds("CT_RUN_LEASE_S", DEFAULT_LEASE_S)


def lease_holder(model: str) -> dict[str, Any] | None:
    """The live lease of `model` (run key, owner, process-held or not, updated), None when free or stale."""
    lease = _read(_lease_path(model))
    if not lease:
        return None
    if lease.get("process"):
        return lease if owner_alive(lease.get("owner", "")) is not False else None
    return lease if time.time() - float(lease.get("updated", 0)) < _lease_s() else None


def check_lease(model: str, run_key: str) -> dict[str, Any] | None:
    """Raise ModelBusy when another live run owns `model`'s lease; else the lease (None when free). Reads
    only: the CLI asks before it opens an MLflow run for a run that would be refused."""
    current = lease_holder(model)
    if current is not None and current.get("run_key") != run_key:
        raise ModelBusy(f"model '{model}' is in the middle of run {current['run_key']!r} (its last step at "
                        f"{datetime.fromtimestamp(float(current['updated']), UTC).isoformat(timespec='seconds')}); "
                        f"run {run_key!r} refused so the two do not interleave: retry once it has written its run "
                        f"record (`python -m ml record --run-key '{current['run_key']}'` closes it now; an "
                        f"abandoned one lapses CT_RUN_LEASE_S={_lease_s():.0f} s after its last step)")
    return current


def take_lease(model: str, run_key: str, *, process: bool = False) -> None:
    """Claim (or renew) the run lease for `run_key`; call with the model lock held. `process=True`: this
    process runs the whole run (the lease dies with it). Raises ModelBusy when another live run owns it."""
    current = check_lease(model, run_key)
    process = process or bool(current and current.get("process") and current.get("owner") == owner_tag())
    _write(_lease_path(model), {"run_key": run_key, "owner": owner_tag(), "process": process, "updated": time.time()})


def release_lease(model: str, run_key: str) -> None:
    """Give the lease up (the run wrote its record); a lease another run holds is left alone."""
    lease = _read(_lease_path(model))
    if lease and lease.get("run_key") == run_key:
        _lease_path(model).unlink(missing_ok=True)

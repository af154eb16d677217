"""MLflow Model Registry semantics: versions, aliases, lineage tags and the alias audit log.

- A version is registered only for a challenger that passed every gate, at most once per pipeline
  run: `register_version` first looks for a version created from the same MLflow run.
- Aliases: `challenger` = the last version that passed training and gates; `champion` = the version
  serving. Every alias move is recorded in the model's *alias ledger* (who, what, why, previous) and
  stamped on the version, so `rollback` is one action.
- The alias ledger is complete and unbounded: one JSON file per move (`alias_moves/<time>-<id>.json`)
  in the model's ledger run (an MLflow run tagged `ct.alias_ledger`, in the model's experiment). A move
  adds a file and never rewrites one, so concurrent moves cannot drop each other and nothing is ever
  trimmed. The registered model's `ct.alias_ledger_run` tag names the run; the capped `ct.alias_log` tag
  of earlier versions of this project is still read.
- The ONNX file is the artifact of the version; `fetch_onnx` verifies it against the `ct.onnx_sha256`
  tag before anyone serves it.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ml.errors import RegistryError
from ml.result import Result

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from ml.decision import Decision
    from ml.drift import DriftResult
    from ml.gates import GateReport
    from ml.state import Validation
    from ml.train import TrainResult

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
#: The capped JSON tag earlier versions kept the alias log in; read, never written.
ALIAS_LOG_TAG = "ct.alias_log"
LEDGER_TAG = "ct.alias_ledger"  # on the ledger run: the model's name
LEDGER_POINTER_TAG = "ct.alias_ledger_run"  # on the registered model: the ledger run's id
LEDGER_FOLDER = "alias_moves"
SHA_TAG = "ct.onnx_sha256"
CONFIG_SHA_TAG = "ct.config_sha256"


@dataclass(frozen=True)
class AliasMove(Result):
    alias: str
    version: str
    previous: str | None
    by: str
    reason: str
    at: str
    #: "promote" | "rollback"; rollouts (ml.deploy.canary): "canary_start", "canary_test", "canary_promote",
    #: "canary_rollback", "shadow_start", "shadow_stop"
    kind: str


@dataclass(frozen=True)
class Registration(Result):
    """The register step's result: the version (created by this run, or found from an earlier attempt)."""

    summary_fields = ("version", "created")

    version: str
    created: bool
    challenger_alias: AliasMove


@dataclass(frozen=True)
class Promotion(Result):
    """The promote step's result: `champion` now names `version` (it named `previous`)."""

    summary_fields = ("version", "previous", "promoted", "sha256")

    version: str
    previous: str | None
    promoted: bool
    move: AliasMove
    #: the ONNX file's sha256 (the version's ct.onnx_sha256): what the model Asset event carries
    sha256: str | None = None


ApprovalDecision = Literal["approved", "rejected", "timed_out", "pending"]


@dataclass(frozen=True)
class Approval(Result):
    """The approve step's result (`promotion.approval: required`): who decided about `version`, and when.
    Only an approved version is deployed and promoted; `pending` = nobody could answer (a run outside Airflow)."""

    summary_fields = ("version", "decision", "by", "at")

    version: str
    decision: ApprovalDecision
    by: str | None = None
    at: str | None = None
    detail: str = ""

    @property
    def approved(self) -> bool:
        return self.decision == "approved"


def actor() -> str:
    """Who moves an alias: the Airflow task (from its env) or the local user."""
    dag, run = os.environ.get("AIRFLOW_CTX_DAG_ID"), os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if dag and run:
        return f"airflow:{dag}/{run}"
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry in some containers
        return "cli:unknown"


def _not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "not found" in str(exc).lower()


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        try:
            client.create_registered_model(name, description="Managed by ct-retraining: see tags ct.*")
        except MlflowException:  # created concurrently
            client.get_registered_model(name)


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _not_found(exc) or "alias" in str(exc).lower():
            return None
        raise


def version_for_run(client: MlflowClient, name: str, mlflow_run_id: str) -> ModelVersion | None:
    """The version registered from this MLflow run, if any (the idempotency key of registration)."""
    found = client.search_model_versions(f"name='{name}' and run_id='{mlflow_run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def version_tags(*, run_key: str, mlflow_run_id: str, code_version: str, validation: Validation,
                 trained: TrainResult, gates: GateReport, decision: Decision | None,
                 drift: DriftResult | None) -> dict[str, str]:
    """The tags a registered version carries: lineage, data, drift summary, holdout metrics, every gate."""
    measured = drift if drift is not None and drift.skipped is None else None
    tags = {
        SHA_TAG: trained.onnx_sha256, "ct.run_key": run_key, "ct.mlflow_run_id": mlflow_run_id,
        "ct.dag_id": validation.dag_id or "", "ct.dag_run_id": validation.dag_run_id or "",
        "ct.code_version": code_version, "ct.estimator": trained.estimator,
        "ct.reference_sha256": validation.reference_sha256 or "",
        "ct.current_sha256": validation.current_sha256 or "",
        "ct.reference_path": validation.reference_path or "", "ct.current_path": validation.current_path or "",
        "ct.eval_source": trained.eval_source, "ct.decision_reason": (decision.reason if decision else "")[:4000],
        "ct.drift": json.dumps({"dataset_drift": measured.dataset_drift if measured else None,
                                "drifted_share": measured.drifted_share if measured else None,
                                "drifted": measured.drifted_features if measured else []}),
    }
    tags |= {f"ct.metric.{k}": str(v) for k, v in trained.metrics.items()}
    tags |= {f"ct.gate.{name}": json.dumps({"passed": g.passed, "value": g.value, "threshold": g.threshold})
             for name, g in gates.gates.items()}
    return tags


def register_version(client: MlflowClient, name: str, model_uri: str, model_id: str | None,
                     mlflow_run_id: str, tags: dict[str, str],
                     description: str | None = None) -> tuple[ModelVersion, bool]:
    """Register the run's model once; returns (version, created). A re-run returns the same version.
    `description` (Markdown) is the version's description in the MLflow UI."""
    ensure_registered_model(client, name)
    existing = version_for_run(client, name, mlflow_run_id)
    if existing is not None:
        log.info("run already registered %s v%s: not creating another version", name, existing.version)
        return existing, False
    version = client.create_model_version(name, source=model_uri, run_id=mlflow_run_id,
                                          tags={k: str(v)[:5000] for k, v in tags.items()}, model_id=model_id,
                                          description=description[:5000] if description else None)
    log.info("registered %s v%s from %s", name, version.version, model_uri)
    return version, True


def _ledger_runs(client: MlflowClient, name: str) -> list[str]:
    """Every ledger run of the model (normally one; two if two first moves raced), oldest first."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{LEDGER_TAG}` = '{name}'",
                              order_by=["attributes.start_time ASC"], max_results=50)
    return [run.info.run_id for run in runs]


def _ledger_run(client: MlflowClient, name: str) -> str:
    """The model's ledger run, created (in the model's experiment) on the first alias move."""
    from ml.tracking import get_or_create_experiment

    pointer = (client.get_registered_model(name).tags or {}).get(LEDGER_POINTER_TAG)
    if pointer:
        return pointer
    found = _ledger_runs(client, name)
    if found:
        return found[0]
    run = client.create_run(get_or_create_experiment(client, name), run_name=f"{name} alias ledger",
                            tags={LEDGER_TAG: name, "mlflow.note.content": (
                                f"Every move of an alias of registered model `{name}`: one JSON file per move "
                                f"under `{LEDGER_FOLDER}/` (written by ct-retraining, never rewritten).")})
    client.set_terminated(run.info.run_id, "FINISHED")
    client.set_registered_model_tag(name, LEDGER_POINTER_TAG, run.info.run_id)
    return run.info.run_id


def _record_move(client: MlflowClient, name: str, move: AliasMove) -> None:
    """Append one move to the ledger: a new file named by the time (microseconds) and a random id."""
    import uuid

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    client.log_dict(_ledger_run(client, name), move.to_dict(), f"{LEDGER_FOLDER}/{stamp}-{uuid.uuid4().hex[:8]}.json")


def alias_log(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of the model, oldest first: the legacy tag's entries, then the ledger."""
    model = client.get_registered_model(name)
    raw = (model.tags or {}).get(ALIAS_LOG_TAG)
    entries: list[dict[str, Any]] = json.loads(raw) if raw else []
    files: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, run_id in enumerate(_ledger_runs(client, name)):
            if not client.list_artifacts(run_id, LEDGER_FOLDER):
                continue
            folder = Path(client.download_artifacts(run_id, LEDGER_FOLDER, str(Path(tmp) / str(i))))
            files += folder.glob("*.json")
        moves = [json.loads(path.read_text()) for path in sorted(files, key=lambda p: p.name)]
    return entries + moves


def move_alias(client: MlflowClient, name: str, alias: str, version: str, reason: str,
               kind: str = "promote") -> AliasMove:
    """Point `alias` at `version` and record the move. Moving it where it already points is a no-op
    (returns the recorded move) so re-runs do not flood the ledger.

    The record (version tags and the ledger entry) is written *before* the alias moves: a failure in
    between leaves at worst a record of a move that a retry then makes, never a moved alias without its
    record (rollback depends on it).
    """
    current = version_by_alias(client, name, alias)
    previous = str(current.version) if current is not None else None
    if previous == str(version):
        recorded = next((e for e in reversed(alias_log(client, name))
                         if e["alias"] == alias and e["version"] == str(version)), None)
        return AliasMove(**recorded) if recorded else AliasMove(
            alias=alias, version=str(version), previous=None, by=actor(), reason=reason,
            at=datetime.now(UTC).isoformat(timespec="seconds"), kind=kind)
    move = AliasMove(alias=alias, version=str(version), previous=previous, by=actor(), reason=reason,
                     at=datetime.now(UTC).isoformat(timespec="seconds"), kind=kind)
    for key, value in (("previous", move.previous or ""), ("by", move.by), ("at", move.at),
                       ("reason", reason[:4000]), ("kind", kind)):
        client.set_model_version_tag(name, str(version), f"ct.{alias}.{key}", value)
    _record_move(client, name, move)
    client.set_registered_model_alias(name, alias, str(version))
    log.info("%s: alias %s %s -> %s (%s)", name, alias, previous, version, reason)
    return move


def record_step(client: MlflowClient, name: str, alias: str, version: str, reason: str, kind: str) -> AliasMove:
    """Record a step of a rollout that moves no alias (a canary's fraction, its test result) in the ledger."""
    move = AliasMove(alias=alias, version=str(version), previous=str(version), by=actor(), reason=reason[:4000],
                     at=datetime.now(UTC).isoformat(timespec="seconds"), kind=kind)
    _record_move(client, name, move)
    return move


def clear_alias(client: MlflowClient, name: str, alias: str, reason: str, kind: str) -> AliasMove | None:
    """Record, then remove `alias` (a canary or shadow that ended); None when it was not set."""
    current = version_by_alias(client, name, alias)
    if current is None:
        return None
    move = record_step(client, name, alias, str(current.version), reason, kind)
    client.delete_registered_model_alias(name, alias)
    log.info("%s: alias %s (v%s) removed (%s)", name, alias, current.version, reason)
    return move


def rollback_target(client: MlflowClient, name: str, alias: str = CHAMPION) -> tuple[str, str]:
    """(current version, version to return to): the version the current one replaced when promoted."""
    current = version_by_alias(client, name, alias)
    if current is None:
        raise RegistryError(f"model '{name}' has no '{alias}' alias: nothing to roll back")
    for entry in reversed(alias_log(client, name)):
        if entry["alias"] == alias and entry["version"] == str(current.version) and entry["kind"] == "promote":
            if entry["previous"]:
                return str(current.version), entry["previous"]
            break
    else:  # a move recorded before the ledger existed: the version's own stamp says the same
        tags = client.get_model_version(name, str(current.version)).tags or {}
        if tags.get(f"ct.{alias}.kind") == "promote" and tags.get(f"ct.{alias}.previous"):
            return str(current.version), tags[f"ct.{alias}.previous"]
    raise RegistryError(f"model '{name}' v{current.version} was the first '{alias}': no earlier version "
                        "to roll back to")


def fetch_onnx(client: MlflowClient, name: str, version: str, dest: Path) -> tuple[Path, str]:
    """Download the version's model.onnx into dest (verified against its sha256 tag)."""
    import mlflow

    from ml.export import sha256_bytes

    mv = client.get_model_version(name, str(version))
    expected = (mv.tags or {}).get(SHA_TAG)
    if not expected:
        raise RegistryError(f"{name} v{version} has no {SHA_TAG} tag: it was not registered by this system")
    target = dest / "model.onnx"
    if target.exists() and sha256_bytes(target.read_bytes()) == expected:
        return target, expected
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
        files = list(local.rglob("*.onnx"))
        if len(files) != 1:
            raise RegistryError(f"{name} v{version}: expected exactly one .onnx artifact, found {len(files)}")
        data = files[0].read_bytes()
        if sha256_bytes(data) != expected:
            raise RegistryError(f"{name} v{version}: model.onnx sha256 does not match tag {SHA_TAG}; "
                                "refusing a tampered artifact")
        # one partial file per process: several server workers may fetch the same version at once
        tmp_target = dest / f"model.onnx.{os.getpid()}.partial"
        shutil.copyfile(files[0], tmp_target)
        tmp_target.replace(target)
    return target, expected

"""Rolling a registered version out to the configured deploy target.

`rollout(config, version, records)`: fetch the ONNX file (sha256-verified), roll out on `local` or
`kubernetes`, smoke-test with sample records whose expected probabilities come from the very file being
served, and roll back on failure. The pipeline's deploy step (and through it `python -m ml deploy
--version` and `rollback`) goes through it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ml.deploy import DeployResult, SmokeCheck
from ml.deploy.smoke import SmokeResult
from ml.errors import DeployError

if TYPE_CHECKING:
    from ml.config import ModelConfig

log = logging.getLogger(__name__)


def registry_smoke_check(config: ModelConfig, records: list[dict[str, Any]]) -> SmokeCheck:
    """The smoke check of both targets: the server's answers to `records` must match the registered ONNX
    file of the version that should be serving (its outputs computed here, from that very file)."""
    import pandas as pd

    from ml.data import model_frame
    from ml.deploy.local import serving_dir
    from ml.deploy.smoke import smoke_test
    from ml.errors import CTError
    from ml.export import ModelIntegrityError, OnnxModel
    from ml.registry import fetch_onnx
    from ml.tracking import mlflow_client

    if not records:
        raise DeployError("no complete rows to smoke-test with")
    client = mlflow_client()
    models = serving_dir(config.name) / "models"
    inputs = model_frame(pd.DataFrame(records), config)

    def check(url: str, version: str, sha256: str | None) -> SmokeResult:
        try:
            path, tagged = fetch_onnx(client, config.name, version, models / f"v{version}")
            expected = OnnxModel.load(path, expected_sha256=sha256 or tagged).predict_proba(inputs).tolist()
        except (CTError, ModelIntegrityError) as exc:  # a hand-registered version: check the rest
            log.warning("no expected outputs for v%s (%s): smoke test without the prediction comparison",
                        version, exc)
            expected = None
        return smoke_test(url, records, version, sha256, expected)

    return check


def rollout(config: ModelConfig, version: str, records: list[dict[str, Any]]) -> DeployResult:
    """Serve `version` of the config's model on its deploy target, smoke-tested with `records`."""
    from ml.deploy.local import deploy_local, serving_dir
    from ml.registry import fetch_onnx
    from ml.tracking import mlflow_client

    target = config.deploy.target
    if target not in ("local", "kubernetes"):
        raise DeployError(f"deploy.target '{target}' is not a deploy target: use local or kubernetes")
    check = registry_smoke_check(config, records)
    # Verifies the artifact against its ct.onnx_sha256 tag before anything is touched.
    model_path, sha = fetch_onnx(mlflow_client(), config.name, str(version),
                                 serving_dir(config.name) / "models" / f"v{version}")
    if target == "kubernetes":
        from ml.deploy.kubernetes import KubernetesTarget, deploy_kubernetes

        return deploy_kubernetes(config.name, str(version), sha, KubernetesTarget.from_config(config), smoke=check)
    return deploy_local(config.name, str(version), model_path, sha, host=config.deploy.host,
                        port=config.deploy.port, timeout_s=config.deploy.startup_timeout_s, smoke=check)


def restore_champion(config: ModelConfig) -> DeployResult | None:
    """Recovery of the local target at the start of a run (after a killed deploy, a killed server, a crash):
    reconcile what really serves with state.json, and when that is not the champion (nothing, or a version
    whose deploy never reached promotion), serve the champion again, smoke-tested on reference rows.
    Returns that deploy, or None when nothing had to change. Never raises for a failed restore: the run goes
    on and its own deploy (if any) tries again."""
    from ml.data import read_window
    from ml.deploy.local import reconcile
    from ml.deploy.smoke import smoke_records
    from ml.errors import CTError
    from ml.registry import CHAMPION, SHA_TAG, version_by_alias
    from ml.tracking import mlflow_client

    if config.deploy.target != "local":
        return None
    serving = reconcile(config.name)
    champion = version_by_alias(mlflow_client(), config.name, CHAMPION)
    if champion is None:
        return None
    sha = (champion.tags or {}).get(SHA_TAG)
    if serving is not None and serving.version == str(champion.version) and serving.sha256 == sha:
        return None
    log.warning("the local target of %s serves %s, not champion v%s: restoring the champion", config.name,
                f"v{serving.version}" if serving else "nothing", champion.version)
    try:
        records = smoke_records(read_window(config.reference_path).frame, config, config.deploy.smoke_rows)
        result = rollout(config, str(champion.version), records)
    except (CTError, OSError) as exc:
        log.error("could not restore champion v%s of %s: %s", champion.version, config.name, exc)
        return None
    log.warning("restore of champion v%s: %s (%s)", champion.version, result.status, result.detail)
    return result

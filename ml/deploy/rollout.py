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

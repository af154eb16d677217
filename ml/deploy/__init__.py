"""Deploy targets: `local` (a process on 127.0.0.1) and `kubernetes` (the deployer in a pod, which
patches the serving Deployment: ml.deploy.kubernetes).

`rollout(config, version, records)` puts a registered version into service on the configured
target: fetch the ONNX file (sha256-verified), roll out, smoke-test with sample records whose
expected probabilities come from the very file being served, and roll back on failure. The pipeline's
deploy step and `python -m ml rollback` both go through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml.config import ModelConfig
    from ml.deploy.local import DeployResult

log = logging.getLogger(__name__)


def rollout(config: ModelConfig, version: str, records: list[dict[str, Any]],
            smoke: Callable[..., Any] | None = None) -> DeployResult:
    """Serve `version` of the config's model; `smoke` replaces ml.deploy.smoke.smoke_test (tests)."""
    import pandas as pd

    from ml.data import model_frame
    from ml.deploy.local import deploy_local, serving_dir
    from ml.deploy.smoke import smoke_test
    from ml.errors import DeployError
    from ml.export import OnnxModel
    from ml.registry import fetch_onnx
    from ml.tracking import mlflow_client

    if config.deploy.target == "kubernetes":
        return _rollout_kubernetes(config, version, records, smoke)
    if config.deploy.target != "local":
        raise DeployError(f"deploy.target '{config.deploy.target}' is not a deploy target: use local or kubernetes")
    if not records:
        raise DeployError("no complete rows to smoke-test with")
    models = serving_dir(config.name) / "models"
    model_path, sha = fetch_onnx(mlflow_client(), config.name, version, models / f"v{version}")
    check = smoke or smoke_test
    inputs = model_frame(pd.DataFrame(records), config)

    def run_smoke(url: str, served_version: str, served_sha: str) -> Any:
        # Expected outputs come from the file that should be serving at this moment (new or restored).
        expected = OnnxModel.load(models / f"v{served_version}" / "model.onnx", expected_sha256=served_sha)
        return check(url, records, served_version, served_sha, expected.predict_proba(inputs).tolist())

    return deploy_local(config.name, str(version), model_path, sha, host=config.deploy.host,
                        port=config.deploy.port, timeout_s=config.deploy.startup_timeout_s, smoke=run_smoke)


def _rollout_kubernetes(config: ModelConfig, version: str, records: list[dict[str, Any]],
                        smoke: Callable[..., Any] | None) -> DeployResult:
    """Patch the serving Deployment (run by the deployer pod); the smoke test compares the Service's
    answers with the registered ONNX file of whichever version should be serving at that moment."""
    import pandas as pd

    from ml.data import model_frame
    from ml.deploy.kubernetes import KubernetesTarget, deploy_kubernetes
    from ml.deploy.local import serving_dir
    from ml.deploy.smoke import smoke_test
    from ml.errors import CTError, DeployError
    from ml.export import ModelIntegrityError, OnnxModel
    from ml.registry import fetch_onnx
    from ml.tracking import mlflow_client

    if not records:
        raise DeployError("no complete rows to smoke-test with")
    client = mlflow_client()
    models = serving_dir(config.name) / "models"
    # Verifies the artifact against its ct.onnx_sha256 tag before the cluster is touched.
    _, sha = fetch_onnx(client, config.name, str(version), models / f"v{version}")
    check = smoke or smoke_test
    inputs = model_frame(pd.DataFrame(records), config)

    def run_smoke(url: str, served_version: str, served_sha: str | None) -> Any:
        try:
            path, tagged = fetch_onnx(client, config.name, served_version, models / f"v{served_version}")
            expected = OnnxModel.load(path, expected_sha256=served_sha or tagged).predict_proba(inputs).tolist()
        except (CTError, ModelIntegrityError) as exc:  # a hand-registered version: check the rest
            log.warning("no expected outputs for v%s (%s): smoke test without the prediction comparison",
                        served_version, exc)
            expected = None
        return check(url, records, served_version, served_sha, expected)

    return deploy_kubernetes(config.name, str(version), sha, KubernetesTarget.from_config(config), smoke=run_smoke)

"""The canary on Kubernetes: a second Deployment `<deployment>-canary` behind the same Service.

The Service selects pods by `app.kubernetes.io/name` only, so the canary's pods (the serving Deployment's pod
template, with the canary's CT_MODEL_* env, `CT_VARIANT=canary` and the label `ct.ml/variant: canary`)
receive a share of the connections in proportion to their number: `canary_replicas` gives the canary
round(R x f / (1 - f)) pods (at least 1) beside the R replicas of the serving Deployment, so the share is
canary / (R + canary); the real share is reported. The canary has its own selector (plus `ct.ml/variant`),
so its ReplicaSets are never the serving Deployment's, and no HPA: its size is fixed while it runs.

`create_canary` builds it from the serving Deployment as it is in the cluster, waits for its rollout
(the same `kubectl rollout status` rules as ml.deploy.kubernetes) and removes it again if it does not
become available; `delete_canary` removes it (promotion patches the serving Deployment to the canary's
version first, through ml.deploy.kubernetes). Calls: deployments get, create, delete (deploy/k8s/deployer-rbac.yaml).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ml.deploy import DeployResult
from ml.deploy.kubernetes import (
    ENV_SHA256,
    ENV_URI,
    ENV_VERSION,
    FIELD_MANAGER,
    MODEL_ANNOTATION,
    SHA256_ANNOTATION,
    VERSION_LABEL,
    KubernetesTarget,
    api_error,
    api_exceptions,
    apps_api,
    read_deployment,
    served_model,
    wait_for_rollout,
)
from ml.errors import DeployError

if TYPE_CHECKING:
    from kubernetes.client import AppsV1Api

log = logging.getLogger(__name__)

VARIANT_LABEL = "ct.ml/variant"
FRACTION_ANNOTATION = "ct.ml/canary-fraction"
ENV_VARIANT = "CT_VARIANT"


def canary_name(deployment: str) -> str:
    return f"{deployment}-canary"


def canary_replicas(serving_replicas: int, fraction: float) -> int:
    """Pods the canary needs for about `fraction` of the connections beside `serving_replicas` pods."""
    return max(1, round(serving_replicas * fraction / (1.0 - fraction)))


def _set_env(container: dict[str, Any], values: dict[str, str]) -> None:
    env = [e for e in container.get("env") or [] if e.get("name") not in values]
    container["env"] = env + [{"name": k, "value": v} for k, v in values.items()]


def canary_manifest(serving: dict[str, Any], *, container: str, model_name: str, version: str, sha256: str,
                    fraction: float) -> dict[str, Any]:
    """The canary Deployment (apps/v1 JSON) built from the serving Deployment's JSON: a pure function."""
    spec = serving["spec"]
    meta = serving["metadata"]
    template = copy.deepcopy(spec["template"])
    template.setdefault("metadata", {}).pop("creationTimestamp", None)
    labels = template["metadata"].setdefault("labels", {})
    labels.pop("pod-template-hash", None)
    labels |= {VARIANT_LABEL: "canary", VERSION_LABEL: str(version)}
    template["metadata"]["annotations"] = {**(template["metadata"].get("annotations") or {}),
                                           MODEL_ANNOTATION: model_name, SHA256_ANNOTATION: sha256}
    found = [c for c in template["spec"]["containers"] if c["name"] == container]
    if not found:
        raise DeployError(f"Deployment {meta['name']} has no container '{container}'; set deploy.kubernetes.container")
    _set_env(found[0], {ENV_URI: f"models:/{model_name}/{version}", ENV_VERSION: str(version), ENV_SHA256: sha256,
                        ENV_VARIANT: "canary"})
    selector = {**(spec["selector"].get("matchLabels") or {}), VARIANT_LABEL: "canary"}
    serving_replicas = spec.get("replicas") if spec.get("replicas") is not None else 1
    keep = ("minReadySeconds", "progressDeadlineSeconds", "strategy")
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": canary_name(meta["name"]), "namespace": meta.get("namespace"),
                     "labels": {**(meta.get("labels") or {}), VARIANT_LABEL: "canary"},
                     "annotations": {FRACTION_ANNOTATION: str(fraction), MODEL_ANNOTATION: model_name,
                                     "kubernetes.io/change-cause": f"{FIELD_MANAGER}: canary v{version}"}},
        "spec": {"replicas": canary_replicas(serving_replicas, fraction), "revisionHistoryLimit": 1,
                 "selector": {"matchLabels": selector}, "template": template,
                 **{k: copy.deepcopy(spec[k]) for k in keep if k in spec}},
    }


def create_canary(model_name: str, version: str, sha256: str, fraction: float, target: KubernetesTarget, *,
                  api: AppsV1Api | None = None, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> DeployResult:
    """Create `<deployment>-canary` serving `version` and wait until it is available (else remove it)."""
    from kubernetes.client import ApiClient

    api = api or apps_api()
    serving = read_deployment(api, target)
    before = served_model(serving.spec.template, target.container)
    body = canary_manifest(ApiClient().sanitize_for_serialization(serving), container=target.container,
                           model_name=model_name, version=str(version), sha256=sha256, fraction=fraction)
    name = body["metadata"]["name"]
    try:
        api.create_namespaced_deployment(target.namespace, body, field_manager=FIELD_MANAGER)
    except api_exceptions() as exc:
        hint = " (a canary is already running: roll it back first)" if getattr(exc, "status", None) == 409 else ""
        raise DeployError(f"creating Deployment {target.namespace}/{name} failed: {api_error(exc)}{hint}") from None
    canary = replace(target, deployment=name)
    state = wait_for_rollout(api, canary, clock=clock, sleep=sleep)
    serving_replicas = serving.spec.replicas if serving.spec.replicas is not None else 1
    pods = body["spec"]["replicas"]
    share = pods / (pods + serving_replicas)
    if not state.done:
        removed = delete_canary(target, api=api)
        return DeployResult("kubernetes", str(version), before.version, "failed", False, None,
                            f"canary v{version} did not become available ({state.message}); {removed}")
    return DeployResult("kubernetes", str(version), before.version, "deployed", False, target.url,
                        f"canary v{version}: {pods} pod(s) of {canary.ref} beside {serving_replicas} of {target.ref} "
                        f"(share {share:.0%} for a fraction of {fraction:.0%}), {state.message}")


def delete_canary(target: KubernetesTarget, *, api: AppsV1Api | None = None) -> str:
    """Remove `<deployment>-canary` (and, through garbage collection, its ReplicaSets and pods)."""
    api = api or apps_api()
    name = canary_name(target.deployment)
    try:
        api.delete_namespaced_deployment(name, target.namespace, propagation_policy="Background")
    except api_exceptions() as exc:
        if getattr(exc, "status", None) == 404:
            return f"Deployment {target.namespace}/{name} was already gone"
        raise DeployError(f"deleting Deployment {target.namespace}/{name} failed: {api_error(exc)}") from None
    log.info("deleted the canary Deployment %s/%s", target.namespace, name)
    return f"Deployment {target.namespace}/{name} deleted"

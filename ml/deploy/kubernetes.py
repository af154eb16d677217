"""The `kubernetes` deploy target: the deployer that runs inside the KubernetesPodOperator pod.

`python -m ml deploy` (the pipeline's deploy step) reaches `deploy_kubernetes` through
`ml.deploy.rollout`. With the official client (in-cluster config, else the kubeconfig) it:

1. reads the serving Deployment and what its container serves (the CT_MODEL_* env);
2. strategic-merge-patches that container's env (CT_MODEL_URI=models:/<name>/<version>,
   CT_MODEL_VERSION, CT_MODEL_SHA256) and a version label/annotation on the pod template, which starts
   a rolling update;
3. waits for the rollout the way `kubectl rollout status` does (observedGeneration, updatedReplicas,
   replicas, availableReplicas; ProgressDeadlineExceeded fails at once), at most
   deploy.kubernetes.rollout_timeout_s;
4. smoke-tests the Service URL (ml.deploy.smoke: /health, /ready version, /model sha256, predictions);
5. on any failure puts the previous pod template back. apps/v1 has no rollback subresource, so this is
   what `kubectl rollout undo` does client side: one JSON patch replacing spec.template, with the
   template read in step 1 or, when that already served this version (a re-run), the template of the
   newest older ReplicaSet serving something else. Then it waits for that rollout and smoke-tests the
   restored version.

Only deployments get/patch and replicasets list are called (deploy/k8s/deployer-rbac.yaml).
Everything that decides (rollout state, patch bodies, which template to restore) is a pure function of
`kubernetes.client` model objects, so tests drive it with a fake AppsV1Api.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml.deploy import DeployResult, SmokeCheck
from ml.deploy.smoke import SmokeResult
from ml.errors import DeployError

if TYPE_CHECKING:
    from kubernetes.client import AppsV1Api, V1Deployment, V1PodTemplateSpec, V1ReplicaSetList

    from ml.config import ModelConfig

log = logging.getLogger(__name__)

ENV_URI = "CT_MODEL_URI"
ENV_VERSION = "CT_MODEL_VERSION"
ENV_SHA256 = "CT_MODEL_SHA256"
VERSION_LABEL = "ct.ml/model-version"
SHA256_ANNOTATION = "ct.ml/model-sha256"
MODEL_ANNOTATION = "ct.ml/model"
CHANGE_CAUSE = "kubernetes.io/change-cause"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
FIELD_MANAGER = "ct-deployer"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

@dataclass(frozen=True)
class KubernetesTarget:
    """Where and how long: the Deployment, its model container, the Service URL, the rollout budget."""

    namespace: str
    deployment: str
    container: str
    url: str
    rollout_timeout_s: float
    poll_interval_s: float = 2.0

    @classmethod
    def from_config(cls, config: ModelConfig) -> KubernetesTarget:
        k8s = config.deploy.kubernetes
        url = k8s.service_url or f"http://{k8s.service}.{k8s.namespace}.svc:{k8s.service_port}"
        return cls(namespace=k8s.namespace, deployment=k8s.deployment, container=k8s.container,
                   url=url.rstrip("/"), rollout_timeout_s=float(k8s.rollout_timeout_s),
                   poll_interval_s=float(k8s.poll_interval_s))

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.deployment}"


@dataclass(frozen=True)
class ServedModel:
    """What a pod template serves, read from its container's CT_MODEL_* env (None where not set)."""

    uri: str | None
    version: str | None
    sha256: str | None

    def label(self) -> str:
        return f"v{self.version}" if self.version else (self.uri or "no model")


@dataclass(frozen=True)
class RolloutState:
    done: bool
    failed: bool
    message: str


# ---- pure functions of kubernetes.client models ------------------------------------------------

def find_container(template: V1PodTemplateSpec, name: str) -> Any:
    for container in (template.spec.containers if template and template.spec else None) or []:
        if container.name == name:
            return container
    return None


def served_model(template: V1PodTemplateSpec, container: str) -> ServedModel:
    found = find_container(template, container)
    env = {e.name: e.value for e in (found.env or [])} if found is not None else {}
    return ServedModel(uri=env.get(ENV_URI), version=env.get(ENV_VERSION), sha256=env.get(ENV_SHA256))


def model_patch(container: str, model_name: str, version: str, sha256: str) -> dict[str, Any]:
    """Strategic merge patch: containers and env merge by name, so only these keys change."""
    uri = f"models:/{model_name}/{version}"
    return {
        "metadata": {"annotations": {CHANGE_CAUSE: f"{FIELD_MANAGER}: {uri} (sha256 {sha256[:12]})"}},
        "spec": {"template": {
            "metadata": {"labels": {VERSION_LABEL: str(version)},
                         "annotations": {MODEL_ANNOTATION: model_name, SHA256_ANNOTATION: sha256}},
            "spec": {"containers": [{"name": container, "env": [
                {"name": ENV_URI, "value": uri},
                {"name": ENV_VERSION, "value": str(version)},
                {"name": ENV_SHA256, "value": sha256},
            ]}]},
        }},
    }


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def restore_patch(template: dict[str, Any], *, expected_version: str | None,
                  annotations_exist: bool, cause: str) -> list[dict[str, Any]]:
    """JSON patch (RFC 6902) putting a whole pod template back. When the current template carries our
    version label, a `test` op makes the patch fail rather than overwrite someone else's change."""
    ops: list[dict[str, Any]] = []
    if expected_version is not None:
        ops.append({"op": "test", "path": f"/spec/template/metadata/labels/{_pointer(VERSION_LABEL)}",
                    "value": str(expected_version)})
    ops.append({"op": "replace", "path": "/spec/template", "value": template})
    if annotations_exist:
        ops.append({"op": "add", "path": f"/metadata/annotations/{_pointer(CHANGE_CAUSE)}", "value": cause})
    return ops


def _conditions(deployment: V1Deployment) -> str:
    conditions = (deployment.status.conditions if deployment.status else None) or []
    parts = [f"{c.type}={c.status}" + (f" ({c.reason}: {c.message})" if c.reason or c.message else "")
             for c in conditions if c.status != "True" or c.reason == "ProgressDeadlineExceeded"]
    return "; ".join(parts)


def rollout_state(deployment: V1Deployment) -> RolloutState:
    """The rollout's progress, decided as `kubectl rollout status` decides it."""
    status = deployment.status
    generation = deployment.metadata.generation or 0
    if status is None or (status.observed_generation or 0) < generation:
        return RolloutState(False, False, "waiting for the deployment controller to observe the new spec")
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return RolloutState(False, True, f"progress deadline exceeded: {condition.message}")
    desired = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    total = status.replicas or 0
    available = status.available_replicas or 0
    if updated < desired:
        return RolloutState(False, False, f"{updated} of {desired} updated replicas")
    if total > updated:
        return RolloutState(False, False, f"{total - updated} old replicas pending termination")
    if available < updated:
        return RolloutState(False, False, f"{available} of {updated} updated replicas available")
    return RolloutState(True, False, f"{available} of {desired} replicas updated and available")


def _template_dict(template: V1PodTemplateSpec) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(template)


def previous_template(replica_sets: V1ReplicaSetList, deployment: V1Deployment, container: str,
                      exclude_uri: str) -> tuple[dict[str, Any], str, ServedModel] | None:
    """(template, revision, what it serves) of the newest ReplicaSet owned by the Deployment that serves
    a model other than `exclude_uri`; the pod-template-hash label the controller adds is dropped."""
    uid = deployment.metadata.uid
    candidates = []
    for rs in replica_sets.items or []:
        owners = rs.metadata.owner_references or []
        if uid and not any(o.uid == uid and o.kind == "Deployment" for o in owners):
            continue
        revision = (rs.metadata.annotations or {}).get(REVISION_ANNOTATION, "0")
        model = served_model(rs.spec.template, container)
        if model.uri != exclude_uri and revision.isdigit():
            candidates.append((int(revision), rs))
    if not candidates:
        return None
    revision, rs = max(candidates, key=lambda pair: pair[0])
    template = _template_dict(rs.spec.template)
    labels = template.get("metadata", {}).get("labels") or {}
    labels.pop("pod-template-hash", None)
    return template, str(revision), served_model(rs.spec.template, container)


# ---- the API edge ------------------------------------------------------------------------------

def apps_api() -> AppsV1Api:
    """AppsV1Api from the pod's service account, else the kubeconfig (a deployer run from a laptop)."""
    from kubernetes import client
    from kubernetes import config as kube_config

    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        try:
            kube_config.load_kube_config()
        except (kube_config.ConfigException, OSError) as exc:
            raise DeployError("no Kubernetes credentials: not in a pod with a service account token and no "
                              f"usable kubeconfig ({exc}); set KUBECONFIG or run the deployer in the cluster") from None
    return client.AppsV1Api()


def api_error(exc: Exception) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    return f"{status} {reason}" if status else f"{type(exc).__name__}: {exc}"


def api_exceptions() -> tuple[type[BaseException], ...]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return ApiException, HTTPError, OSError


def wait_for_rollout(api: AppsV1Api, target: KubernetesTarget, *, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> RolloutState:
    """Poll the Deployment until its rollout completes, fails, or rollout_timeout_s passes."""
    deadline = clock() + target.rollout_timeout_s
    last = ""
    while True:
        try:
            deployment = api.read_namespaced_deployment(target.deployment, target.namespace)
        except api_exceptions() as exc:  # transient API trouble: keep polling until the deadline
            state = RolloutState(False, False, f"reading {target.ref} failed: {api_error(exc)}")
        else:
            state = rollout_state(deployment)
            if not state.done and not state.failed and (extra := _conditions(deployment)):
                state = RolloutState(False, False, f"{state.message} [{extra}]")
        if state.message != last:
            log.info("rollout of %s: %s", target.ref, state.message)
            last = state.message
        if state.done or state.failed:
            return state
        remaining = deadline - clock()
        if remaining <= 0:
            return RolloutState(False, True, f"rollout not complete after {target.rollout_timeout_s:.0f}s "
                                             f"(deploy.kubernetes.rollout_timeout_s): {state.message}")
        sleep(min(target.poll_interval_s, remaining))


def read_deployment(api: AppsV1Api, target: KubernetesTarget) -> V1Deployment:
    try:
        return api.read_namespaced_deployment(target.deployment, target.namespace)
    except api_exceptions() as exc:
        hint = " (apply deploy/k8s first)" if getattr(exc, "status", None) == 404 else \
            " (the deployer's Role needs get/patch on deployments)" if getattr(exc, "status", None) == 403 else ""
        raise DeployError(f"cannot read Deployment {target.ref}: {api_error(exc)}{hint}") from None


def deploy_kubernetes(model_name: str, version: str, sha256: str, target: KubernetesTarget, *, smoke: SmokeCheck,
                      api: AppsV1Api | None = None, clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> DeployResult:
    """Roll the serving Deployment to `version`; smoke-test; restore the previous template on failure."""
    api = api or apps_api()
    version = str(version)
    current = read_deployment(api, target)
    if find_container(current.spec.template, target.container) is None:
        names = [c.name for c in current.spec.template.spec.containers or []]
        raise DeployError(f"Deployment {target.ref} has no container '{target.container}' (it has {names}); "
                          "set deploy.kubernetes.container")
    if current.spec.paused:
        raise DeployError(f"Deployment {target.ref} is paused: `kubectl rollout resume` it, then deploy again")
    before = served_model(current.spec.template, target.container)
    wanted = ServedModel(f"models:/{model_name}/{version}", version, sha256)
    saved = _template_dict(current.spec.template)

    if before == wanted:
        log.info("%s already serves %s v%s: checking the rollout and the smoke test", target.ref, model_name, version)
        state = wait_for_rollout(api, target, clock=clock, sleep=sleep)
        check = smoke(target.url, version, sha256) if state.done else None
        if check is not None and check.passed:
            return DeployResult("kubernetes", version, before.version, "unchanged", False, target.url,
                                f"v{version} already serving from {target.ref}: {check.detail}", check.to_dict())
        failure = check.detail if check is not None else state.message
        return _roll_back(api, target, model_name, version, failure, check, fallback=None, before=before,
                          smoke=smoke, clock=clock, sleep=sleep)

    log.info("rolling %s from %s to %s v%s", target.ref, before.label(), model_name, version)
    try:
        api.patch_namespaced_deployment(target.deployment, target.namespace,
                                        model_patch(target.container, model_name, version, sha256),
                                        field_manager=FIELD_MANAGER, _content_type=STRATEGIC_MERGE_PATCH)
    except api_exceptions() as exc:
        raise DeployError(f"patching Deployment {target.ref} failed: {api_error(exc)}; nothing was changed") from None
    state = wait_for_rollout(api, target, clock=clock, sleep=sleep)
    check = smoke(target.url, version, sha256) if state.done else None
    if check is not None and check.passed:
        return DeployResult("kubernetes", version, before.version, "deployed", False, target.url,
                            f"v{version} rolled out to {target.ref} ({state.message}) and serving at "
                            f"{target.url}: {check.detail}", check.to_dict())
    failure = f"smoke test failed: {check.detail}" if check is not None else state.message
    log.error("v%s failed on %s: %s", version, target.ref, failure)
    return _roll_back(api, target, model_name, version, failure, check, fallback=saved, before=before,
                      smoke=smoke, clock=clock, sleep=sleep)


def _roll_back(api: AppsV1Api, target: KubernetesTarget, model_name: str, version: str, failure: str,
               check: SmokeResult | None, *, fallback: dict[str, Any] | None, before: ServedModel, smoke: SmokeCheck,
               clock: Callable[[], float], sleep: Callable[[float], None]) -> DeployResult:
    """Put back the template that served before (or the newest older revision) and verify it."""
    smoke_dict = check.to_dict() if check is not None else None

    def failed(detail: str) -> DeployResult:
        return DeployResult("kubernetes", version, before.version, "failed", False, None, detail, smoke_dict)

    try:
        current = read_deployment(api, target)
    except DeployError as exc:
        return failed(f"v{version} failed ({failure}) and the rollback could not start: {exc}")
    new_uri = f"models:/{model_name}/{version}"
    restore: tuple[dict[str, Any], str, ServedModel] | None = None
    if fallback is not None and before.uri != new_uri:
        restore = (fallback, "the template it replaced", before)
    else:
        try:
            replica_sets = api.list_namespaced_replica_set(target.namespace, label_selector=_selector(current))
        except api_exceptions() as exc:
            return failed(f"v{version} failed ({failure}); listing ReplicaSets to find the previous revision "
                          f"failed: {api_error(exc)} (the deployer's Role needs list on replicasets)")
        found = previous_template(replica_sets, current, target.container, new_uri)
        if found is not None:
            template, revision, model = found
            restore = (template, f"revision {revision}", model)
    if restore is None:
        return failed(f"v{version} failed ({failure}); {target.ref} has no earlier revision to roll back to")
    template, source, restored = restore
    labels = (current.spec.template.metadata.labels if current.spec.template.metadata else None) or {}
    body = restore_patch(template, expected_version=labels.get(VERSION_LABEL),
                         annotations_exist=current.metadata.annotations is not None,
                         cause=f"{FIELD_MANAGER}: rollback of v{version} to {restored.label()}")
    log.warning("rolling %s back to %s (%s)", target.ref, restored.label(), source)
    try:
        api.patch_namespaced_deployment(target.deployment, target.namespace, body,
                                        field_manager=FIELD_MANAGER, _content_type=JSON_PATCH)
    except api_exceptions() as exc:
        return failed(f"v{version} failed ({failure}) and restoring {restored.label()} failed: {api_error(exc)}")
    state = wait_for_rollout(api, target, clock=clock, sleep=sleep)
    if not state.done:
        return failed(f"v{version} failed ({failure}) and the rollback to {restored.label()} did not complete: "
                      f"{state.message}")
    detail = f"v{version} failed ({failure}); rolled {target.ref} back to {restored.label()} ({source})"
    if restored.version:
        back = smoke(target.url, restored.version, restored.sha256)
        if not back.passed:
            return failed(f"{detail}, but the restored version fails its smoke test too: {back.detail}")
        detail += ", which passes the smoke test"
    return DeployResult("kubernetes", version, before.version, "rolled_back", True, target.url, detail, smoke_dict)


def _selector(deployment: V1Deployment) -> str:
    labels = (deployment.spec.selector.match_labels if deployment.spec.selector else None) or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

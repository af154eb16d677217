"""Kubernetes objects checked against the official schemas (kubernetes-validate, Kubernetes 1.33, strict:
unknown fields fail) and against the security settings the design requires, with no API server:

- every manifest in deploy/k8s, and what `kubectl kustomize deploy/k8s` renders from them;
- the pods the KubernetesTrainOperator and KubernetesDeployOperator build (`build_pod_request_obj()` of the
  KubernetesPodOperator they create at run time; a dummy kubeconfig, nothing connects);
- least-privilege RBAC: the deployer Role grants exactly the calls ml/deploy/kubernetes.py makes;
- least-privilege networking: default deny, and per component exactly the traffic it needs (NetworkPolicy);
- the serving pods' own MLflow Secret (read-only login), distinct from the trainer's and the deployer's;
- every image pinned by digest, in the manifests or by kustomize's `images:`.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient

from ct_airflow.kubernetes import (
    CONFIG_GUARD,
    POD_USER_ID,
    KubernetesDeployOperator,
    KubernetesTrainOperator,
    build_step_pod_operator,
)
from ml.config import config_sha256, load_config
from tests.conftest import REPO, write_config

K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.33"
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def by_kind(kind: str, name: str | None = None) -> dict:
    found = [d for f in MANIFESTS for d in documents(f)
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def serialise(obj: object) -> dict:
    return ApiClient().sanitize_for_serialization(obj)


# ---- the manifests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_the_kubernetes_schema(name):
    docs = documents(name)
    assert docs
    for doc in docs:
        validate(doc)


def test_the_schema_check_rejects_what_a_cluster_would_reject():
    deployment = by_kind("Deployment")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)
    container = {**deployment["spec"]["template"]["spec"]["containers"][0],
                 "securityContext": {"runAsNonRoot": "yes"}}
    bad_type = {**deployment, "spec": {**deployment["spec"], "template": {
        **deployment["spec"]["template"], "spec": {**deployment["spec"]["template"]["spec"],
                                                   "containers": [container]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad_type)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == MANIFESTS
    assert kustomization["namespace"] == "ml"
    image = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] in {i["name"] for i in kustomization["images"]}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (client only) is not installed")
def test_kustomize_output_validates_and_is_namespaced():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) == sum(len(documents(f)) for f in MANIFESTS)
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "ml", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ct"
        assert all(re.search(r"@sha256:[0-9a-f]{64}$", image) for image in _images(doc)), _images(doc)
    # The Airflow launcher binding keeps pointing at Airflow's own namespace.
    launcher = next(d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "ct-pod-launcher")
    assert launcher["subjects"][0]["namespace"] == "airflow"


def test_namespace_enforces_the_restricted_pod_security_standard():
    labels = by_kind("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def _container_is_locked_down(container: dict) -> None:
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True and sc.get("privileged") is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_serving_deployment_security_probes_and_resources():
    deployment = by_kind("Deployment", "ct-serving")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "ct-serving"
    assert by_kind("ServiceAccount", "ct-serving")["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == POD_USER_ID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    _container_is_locked_down(container)
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert {p["name"] for p in container["ports"]} == {"http"}
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    # MLflow's location and credentials come from a Secret, never from a literal in the manifest: the serving
    # pods' own (a read-only MLflow login), never the one the trainer and deployer pods write with.
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-serving-credentials"}}]
    defaults = load_config(REPO / "configs" / "employee-attrition.yaml")
    assert "mlflow-serving-credentials" not in {defaults.training.kubernetes.mlflow_secret,
                                                 defaults.deploy.kubernetes.mlflow_secret}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert not {n for n in env if n.startswith(("MLFLOW_", "AWS_", "AZURE_", "GOOGLE_"))}
    # The deployer owns the version pin: the manifest follows the alias until the first deploy.
    assert env["CT_MODEL_URI"].endswith("@champion") and "CT_MODEL_VERSION" not in env
    # Every path the server writes is a mounted emptyDir (the root filesystem is read-only).
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {env["CT_PREDICTION_LOG_DIR"], env["CT_HOME"], env["HOME"]} <= mounts
    assert all("emptyDir" in v and v["emptyDir"].get("sizeLimit") for v in pod["volumes"])
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["revisionHistoryLimit"] >= 2  # the deployer rolls back to an older ReplicaSet


def test_service_hpa_and_pdb_point_at_the_serving_pods():
    deployment = by_kind("Deployment", "ct-serving")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service", "ct-serving")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http" and service["spec"]["ports"][0]["port"] == 8808
    hpa = by_kind("HorizontalPodAutoscaler", "ct-serving")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ct-serving"}
    assert hpa["spec"]["minReplicas"] >= 2 and "replicas" not in deployment["spec"]
    pdb = by_kind("PodDisruptionBudget", "ct-serving")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def _api_calls(path: Path) -> set[str]:
    """Names of the AppsV1Api methods a module calls as `api.<method>(...)`."""
    tree = ast.parse(path.read_text())
    return {node.func.attr for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "api"}


def test_deployer_role_grants_exactly_the_calls_the_deployer_makes():
    calls = _api_calls(REPO / "ml" / "deploy" / "kubernetes.py") | _api_calls(
        REPO / "ml" / "deploy" / "kubernetes_canary.py")
    verbs = {"read_namespaced_deployment": ("deployments", "get"),
             "patch_namespaced_deployment": ("deployments", "patch"),
             "list_namespaced_replica_set": ("replicasets", "list"),
             "create_namespaced_deployment": ("deployments", "create"),
             "delete_namespaced_deployment": ("deployments", "delete")}
    assert calls == set(verbs), f"the deployer calls {sorted(calls)}: update deploy/k8s/deployer-rbac.yaml"
    role = by_kind("Role", "ct-deployer")
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == set(verbs.values())
    assert all(rule["apiGroups"] == ["apps"] for rule in role["rules"])
    serving = load_config(REPO / "configs" / "employee-attrition.yaml").deploy.kubernetes.deployment
    named = {(v, tuple(rule.get("resourceNames") or ())) for rule in role["rules"]
             if rule["resources"] == ["deployments"] for v in rule["verbs"]}
    canary = f"{serving}-canary"
    assert named == {("get", (serving,)), ("patch", (serving,)), ("get", (canary,)), ("delete", (canary,)),
                     ("create", ())}
    binding = by_kind("RoleBinding", "ct-deployer")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ct-deployer"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ct-deployer", "namespace": "ml"}]
    assert by_kind("ServiceAccount", "ct-deployer")["automountServiceAccountToken"] is False


def test_no_role_uses_wildcards_secrets_or_cluster_scope():
    kinds = {d["kind"] for f in MANIFESTS for d in documents(f)}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    for f in MANIFESTS:
        for doc in documents(f):
            for rule in doc.get("rules", []):
                values = rule["apiGroups"] + rule["resources"] + rule["verbs"]
                assert "*" not in values and "secrets" not in rule["resources"], (f, rule)
    launcher = by_kind("Role", "ct-pod-launcher")
    assert {r for rule in launcher["rules"] for r in rule["resources"]} == {"pods", "pods/log", "events"}
    # The trainer talks to MLflow only: no token, no binding.
    assert by_kind("ServiceAccount", "ct-trainer")["automountServiceAccountToken"] is False
    bound = {s["name"] for f in MANIFESTS for d in documents(f) if d["kind"] == "RoleBinding" for s in d["subjects"]}
    assert "ct-trainer" not in bound and "ct-serving" not in bound


# ---- network policies ------------------------------------------------------------------------------------

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
POLICY_FILE = "network-policies.yaml"


def policies() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents(POLICY_FILE) if d["kind"] == "NetworkPolicy"}


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are evaluated here"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer(rule: dict) -> str:
    """What one egress rule allows, by name: dns, mlflow, serving or kubernetes-api (else: unexpected)."""
    ports = sorted((p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", []))
    to = rule.get("to")
    if to is None:
        return "kubernetes-api" if ports == [(443, "TCP"), (6443, "TCP")] else f"anywhere {ports}"
    (peer,) = to
    ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
    pod = peer.get("podSelector", {}).get("matchLabels", {})
    if ns == "kube-system" and pod == {"k8s-app": "kube-dns"} and ports == [(53, "TCP"), (53, "UDP")]:
        return "dns"
    if ns == "mlflow" and pod == {"app.kubernetes.io/name": "mlflow"} and ports == [(5000, "TCP")]:
        return "mlflow"
    if ns is None and pod == {"app.kubernetes.io/name": "ct-serving"} and ports == [(8808, "TCP")]:
        return "serving"
    return f"unexpected {rule}"


def allowed(labels: dict) -> tuple[list[dict], set[str]]:
    """(ingress rules, egress peers) the namespace's policies allow a pod with `labels` (policies add up)."""
    ingress, egress = [], set()
    for policy in policies().values():
        spec = policy["spec"]
        if _selects(spec["podSelector"], labels):
            ingress += spec.get("ingress", [])
            egress |= {_peer(rule) for rule in spec.get("egress", [])}
    return ingress, egress


def test_network_policies_deny_by_default():
    deny = policies()["ct-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    # any pod in the namespace, e.g. one someone starts by hand: DNS only, nothing in
    assert allowed({"run": "debug"}) == ([], {"dns"})


def test_serving_takes_traffic_on_its_port_only_and_talks_only_to_mlflow():
    pod = by_kind("Deployment", "ct-serving")["spec"]["template"]
    ingress, egress = allowed(pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    (port,) = container["ports"]
    assert ingress == [{"ports": [{"port": port["containerPort"], "protocol": "TCP"}]}]
    assert by_kind("Service", "ct-serving")["spec"]["ports"][0]["port"] == port["containerPort"]
    assert egress == {"dns", "mlflow"}


def test_trainer_and_deployer_pods_get_only_what_their_step_needs(kubeconfig, k8s_config):
    labels = {step: serialise(built(step, k8s_config).build_pod_request_obj())["metadata"]["labels"]
              for step in ("train", "deploy")}
    assert allowed(labels["train"]) == ([], {"dns", "mlflow"})
    # the deployer also patches the Deployment (Kubernetes API) and smoke-tests the Service
    assert allowed(labels["deploy"]) == ([], {"dns", "mlflow", "kubernetes-api", "serving"})
    # each policy names one component: the trainer's never selects the serving pods, and so on
    pods = {**labels, "serving": by_kind("Deployment", "ct-serving")["spec"]["template"]["metadata"]["labels"]}
    selected = {name: [who for who, lab in pods.items() if _selects(p["spec"]["podSelector"], lab)]
                for name, p in policies().items()}
    everyone = ["train", "deploy", "serving"]
    assert selected == {"ct-default-deny": everyone, "ct-allow-dns": everyone, "ct-serving": ["serving"],
                        "ct-trainer": ["train"], "ct-deployer": ["deploy"]}


def test_the_policy_reading_is_not_vacuous(monkeypatch):
    """The evaluator above sees a widened policy: an egress rule to anywhere, an extra ingress port."""
    widened = copy.deepcopy(policies())
    widened["ct-serving"]["spec"]["egress"].append({})
    widened["ct-serving"]["spec"]["ingress"][0]["ports"].append({"port": 22, "protocol": "TCP"})
    for doc in widened.values():
        validate(doc)  # still a valid object: only the policy test can catch it
    monkeypatch.setitem(globals(), "policies", lambda: widened)
    ingress, egress = allowed(by_kind("Deployment", "ct-serving")["spec"]["template"]["metadata"]["labels"])
    assert egress == {"dns", "mlflow", "anywhere []"} and len(ingress[0]["ports"]) == 2


# ---- images pinned by digest ---------------------------------------------------------------------------

def _images(doc: dict) -> list[str]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec)
    return [c["image"] for key in ("initContainers", "containers") for c in pod.get(key, []) if "image" in c]


def unpinned(docs: list[dict], kustomization: dict) -> list[str]:
    """Images neither pinned by digest in place nor set to a digest by kustomize's `images:`."""
    set_by_kustomize = {i["name"] for i in kustomization.get("images", [])
                        if DIGEST.match(i.get("digest", "")) and "newTag" not in i}
    return [image for doc in docs for image in _images(doc)
            if not re.search(r"@sha256:[0-9a-f]{64}$", image) and image not in set_by_kustomize]


def test_every_image_is_pinned_by_digest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [d for f in MANIFESTS for d in documents(f)]
    assert [i for d in docs for i in _images(d)], "no image found: the walk is broken"
    assert unpinned(docs, kustomization) == []
    for entry in kustomization["images"]:
        assert DIGEST.match(entry["digest"]) and "newTag" not in entry, entry
    # a tag alone, or a kustomize entry with a tag, is not a pin
    deployment = copy.deepcopy(by_kind("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "ct-serving:latest"
    assert unpinned([deployment], kustomization) == ["ct-serving:latest"]
    assert unpinned([by_kind("Deployment")], {"images": [{"name": "ct-serving", "newTag": "v1"}]}) == ["ct-serving"]


# ---- the pods the operators build ----------------------------------------------------------------------

@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    """The Airflow connection kubernetes_default with a kubeconfig naming an API server nobody runs:
    building a pod request must not need one."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dummy",
        "clusters": [{"name": "dummy", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "dummy", "context": {"cluster": "dummy", "user": "dummy"}}],
        "users": [{"name": "dummy", "user": {"token": "dummy"}}]}))
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(path)}}))
    return path


@pytest.fixture
def k8s_config(tmp_path):
    return write_config(tmp_path / "config", training={"backend": "kubernetes", "kubernetes": {
        "image": "registry.example.com/ct-ml:abc123", "cpu": "2", "memory": "4Gi", "node_selector": {"pool": "cpu"}}},
        deploy={"target": "kubernetes", "kubernetes": {"deployer_image": "registry.example.com/ct-ml:abc123"}})


OPERATORS = {"train": KubernetesTrainOperator, "deploy": KubernetesDeployOperator}


def built(step: str, config_path: Path, **kwargs):
    op = OPERATORS[step](task_id=f"{step}_kubernetes", config_path=str(config_path), run_key="manual__2026-03-01",
                         **kwargs)
    return op.inner_operator({})


@pytest.mark.parametrize("step", ["train", "deploy"])
def test_operator_pods_validate_and_are_locked_down(step, kubeconfig, k8s_config):
    pod_op = built(step, k8s_config)
    assert pod_op.on_finish_action.value == "delete_succeeded_pod"  # failed pods stay for kubectl logs
    assert pod_op.do_xcom_push is False and pod_op.get_logs is True and pod_op.deferrable is False
    pod = serialise(pod_op.build_pod_request_obj())
    validate(pod)

    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == "ml" and spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == {"train": "ct-trainer", "deploy": "ct-deployer"}[step]
    # Only the deployer calls the Kubernetes API (its Role); the trainer carries no token.
    assert spec["automountServiceAccountToken"] is (step == "deploy")
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == POD_USER_ID
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]  # no XCom sidecar: results travel through MLflow
    _container_is_locked_down(container)
    assert container["image"] == "registry.example.com/ct-ml:abc123"
    assert container["volumeMounts"] == [{"mountPath": "/tmp", "name": "tmp"}]
    assert spec["volumes"][0]["emptyDir"]["sizeLimit"]
    resources = container["resources"]
    assert {"cpu", "memory", "ephemeral-storage"} <= set(resources["requests"])
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert spec["activeDeadlineSeconds"] > 0

    # The entrypoint: the config guard, then `python -m ml <step> --config ... --run-key ...`.
    assert container["command"] == ["/bin/sh", "-c", CONFIG_GUARD, "ct"]
    assert container["args"] == [step, "--config", f"/app/configs/{k8s_config.name}", "--run-key",
                                 "manual__2026-03-01"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CT_CONFIG"] == f"/app/configs/{k8s_config.name}"
    assert env["CT_CONFIG_SHA256"] == config_sha256(k8s_config)
    assert env["CT_HOME"].startswith("/tmp/") and env["HOME"] == "/tmp"
    # MLflow's URI and credentials: from the Secret, not from literals.
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-credentials", "optional": False}}]
    assert not [n for n in env if n.startswith("MLFLOW_")]
    assert not [v for v in env.values() if "://" in v]
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == {"train": "trainer",
                                                                        "deploy": "deployer"}[step]
    assert pod["metadata"]["annotations"]["ct.ml/run-key"] == "manual__2026-03-01"


def test_training_pod_takes_its_resources_from_the_config(kubeconfig, k8s_config):
    pod = serialise(built("train", k8s_config).build_pod_request_obj())
    container = pod["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "2" and container["resources"]["requests"]["memory"] == "4Gi"
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"}
    config = load_config(k8s_config)
    assert pod["spec"]["activeDeadlineSeconds"] == config.training.kubernetes.timeout_s
    deploy = serialise(built("deploy", k8s_config).build_pod_request_obj())
    # Long enough for a rollout forward and one back.
    assert deploy["spec"]["activeDeadlineSeconds"] > 2 * config.deploy.kubernetes.rollout_timeout_s


def test_overrides_and_deferral_reach_the_pod(kubeconfig, k8s_config):
    pod_op = built("train", k8s_config, reference_path="/data/ref.parquet", current_path="", deferrable=True)
    assert pod_op.deferrable is True
    args = serialise(pod_op.build_pod_request_obj())["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--reference", "/data/ref.parquet"] and "--current" not in args


def test_building_the_pod_needs_no_cluster(tmp_path, k8s_config):
    config = load_config(k8s_config)
    pod_op = build_step_pod_operator(config, step="deploy", task_id="t", run_key="r", config_sha256=None)
    pod = serialise(pod_op.build_pod_request_obj(dry_run=True))
    validate(pod)
    assert "CT_CONFIG_SHA256" not in {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    with pytest.raises(ValueError, match="steps run in pods are 'train', 'deploy' and 'batch'"):
        build_step_pod_operator(config, step="gates", task_id="t", run_key="r", config_sha256=None)


def test_constructors_only_assign_templated_fields():
    for cls in OPERATORS.values():
        op = cls(task_id="t", config_path="{{ params.config }}", reference_path="{{ params.reference_path }}")
        assert op.config_path == "{{ params.config }}" and op.reference_path == "{{ params.reference_path }}"
        assert op.run_key == "{{ run_id }}"
        assert set(cls.template_fields) == {"config_path", "reference_path", "current_path", "run_key"}


def test_the_dag_routes_kubernetes_configs_to_these_operators(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("retraining_dag_under_test", REPO / "dags" / "retraining.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.DAGS["employee-attrition.retrain"]  # one DAG per config in configs/
    assert isinstance(dag.get_task("retrain.train_kubernetes"), KubernetesTrainOperator)
    assert isinstance(dag.get_task("release.deploy_kubernetes"), KubernetesDeployOperator)
    config = write_config(tmp_path / "c", training={"backend": "kubernetes"}, deploy={"target": "kubernetes"})

    def branch(task_id: str, override: str | None = None) -> str:
        task = copy.copy(dag.get_task(task_id))
        task.config_path, task.override = str(config), override  # as rendered from the params
        return task.choose_branch({})

    assert branch("retrain.choose_backend") == "retrain.train_kubernetes"
    assert branch("retrain.choose_backend", "databricks") == "retrain.train_databricks"
    assert branch("release.choose_target") == "release.deploy_kubernetes"


# ---- the images the pods run ---------------------------------------------------------------------------

def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_ml_image_pins_are_the_tested_versions():
    image = _pins(REPO / "docker" / "requirements-ml.txt")
    constraints = _pins(REPO / "constraints.txt")
    assert {"mlflow", "scikit-learn", "kubernetes"} <= set(image)
    assert {name: constraints.get(name) for name in image} == image


def test_images_run_as_the_pods_non_root_user():
    ml_image = (REPO / "docker" / "ml.Dockerfile").read_text()
    assert f"USER {POD_USER_ID}:{POD_USER_ID}" in ml_image and "ENTRYPOINT [\"python\", \"-m\", \"ml\"]" in ml_image
    assert "COPY configs/ /app/configs/" in ml_image  # where the pods look for the model config by default
    serving = (REPO / "ml" / "serving" / "Dockerfile").read_text()
    assert f"USER {POD_USER_ID}" in serving
    pod = by_kind("Deployment", "ct-serving")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == POD_USER_ID

"""The canary Deployment on Kubernetes (ml.deploy.kubernetes_canary), with the real `kubernetes` client against
the fake API server (tests/fake_kubernetes.py, RBAC from deploy/k8s/deployer-rbac.yaml): built from the
serving Deployment, behind the same Service, sized by the fraction, validated against the official schema
(kubernetes-validate, strict), removed again on promote/rollback and when it never becomes available."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import AppsV1Api
from kubernetes.config import new_client_from_config

from ml.deploy.kubernetes import KubernetesTarget
from ml.deploy.kubernetes_canary import VARIANT_LABEL, canary_replicas, create_canary, delete_canary
from ml.errors import DeployError
from tests.fake_kubernetes import K8S, FakeCluster, fake_kubernetes, template_env, write_kubeconfig
from tests.ml.deploy.test_kubernetes import FakeClock as Clock

SHA = "3" * 64


@pytest.fixture
def k8s(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with fake_kubernetes(FakeCluster(behaviors={"4": "stuck"})) as (api_server, model_server):
        client = new_client_from_config(config_file=str(write_kubeconfig(tmp_path / "kubeconfig", api_server.url)))
        target = KubernetesTarget(namespace="ml", deployment="ct-serving", container="serving", url=model_server.url,
                                  rollout_timeout_s=10.0, poll_interval_s=0.5)
        yield api_server.cluster, AppsV1Api(client), target


@pytest.mark.parametrize(("replicas", "fraction", "pods"), [(2, 0.1, 1), (9, 0.1, 1), (18, 0.1, 2), (4, 0.5, 4),
                                                             (10, 0.25, 3)])
def test_canary_pods_are_in_proportion_to_the_fraction(replicas, fraction, pods):
    assert canary_replicas(replicas, fraction) == pods


def test_create_then_delete_the_canary_deployment(k8s):
    cluster, api, target = k8s
    clock = Clock()
    result = create_canary("employee-attrition", "3", SHA, 0.1, target, api=api, clock=clock, sleep=clock.sleep)
    assert result.ok and result.status == "deployed", result.detail
    assert "1 pod(s) of ml/ct-serving-canary beside 2 of ml/ct-serving (share 33%" in result.detail
    doc, _ = cluster.created["ct-serving-canary"]
    kubernetes_validate.validate({k: v for k, v in doc.items() if k != "status"}, "1.33", strict=True)
    service = next(d for d in yaml.safe_load_all((K8S / "serving-service.yaml").read_text()) if d)
    pod_labels = doc["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()  # behind the same Service
    assert doc["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "ct-serving", VARIANT_LABEL: "canary"}
    assert doc["spec"]["replicas"] == 1 and pod_labels["ct.ml/model-version"] == "3"
    env = template_env(doc["spec"]["template"])
    assert env["CT_MODEL_URI"] == "models:/employee-attrition/3" and env["CT_MODEL_SHA256"] == SHA
    assert env["CT_VARIANT"] == "canary" and env["CT_PREDICTION_LOG_DIR"]  # the rest as the serving pods have it
    assert template_env(cluster.template)["CT_MODEL_URI"] == "models:/employee-attrition@champion"  # untouched
    assert delete_canary(target, api=api) == "Deployment ml/ct-serving-canary deleted"
    assert "ct-serving-canary" not in cluster.created
    assert delete_canary(target, api=api).endswith("already gone")
    assert {c for c in cluster.calls()} == {("get", "deployments"), ("create", "deployments"),
                                            ("delete", "deployments")}
    assert all(r.status < 400 or r.status == 404 for r in cluster.requests)


def test_a_canary_that_never_becomes_available_is_removed(k8s):
    cluster, api, target = k8s
    clock = Clock()
    result = create_canary("employee-attrition", "4", SHA, 0.2, target, api=api, clock=clock, sleep=clock.sleep)
    assert result.status == "failed" and "did not become available" in result.detail
    assert "ct-serving-canary" not in cluster.created


def test_a_second_canary_is_refused_while_one_runs(k8s):
    cluster, api, target = k8s
    clock = Clock()
    assert create_canary("employee-attrition", "3", SHA, 0.1, target, api=api, clock=clock, sleep=clock.sleep).ok
    with pytest.raises(DeployError, match="already running: roll it back first"):
        create_canary("employee-attrition", "5", SHA, 0.1, target, api=api, clock=clock, sleep=clock.sleep)
    assert template_env(cluster.created["ct-serving-canary"][0]["spec"]["template"])["CT_MODEL_VERSION"] == "3"

"""The Kubernetes deployer (ml.deploy.kubernetes) against the real `kubernetes` client talking HTTP to a fake
API server on 127.0.0.1 (tests/fake_kubernetes.py: the JSON the API returns, a deployment controller that
advances one step per read, RBAC from deploy/k8s/deployer-rbac.yaml), with the real smoke test
(ml.deploy.smoke) against a fake Service. A fake clock makes rollout timeouts instant.

Covered: success -> status reported; re-run of the same version -> unchanged, nothing patched; rollout
timeout -> rollback; ProgressDeadlineExceeded -> rollback before the timeout; smoke failure -> rollback;
a re-run whose version fails -> rollback to the previous ReplicaSet revision; no rights -> a clear error.
"""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes.client import (
    AppsV1Api,
    V1Deployment,
    V1DeploymentCondition,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1LabelSelector,
    V1ObjectMeta,
    V1PodTemplateSpec,
)
from kubernetes.config import new_client_from_config

from ml.deploy.kubernetes import (
    CHANGE_CAUSE,
    VERSION_LABEL,
    KubernetesTarget,
    deploy_kubernetes,
    rollout_state,
)
from ml.deploy.smoke import smoke_test
from ml.errors import DeployError
from tests.fake_kubernetes import (
    JSON_PATCH,
    SMP,
    FakeCluster,
    ModelBehaviour,
    canonical_template,
    fake_kubernetes,
    write_kubeconfig,
)

MODEL = "employee-attrition"
SHA = {"1": "1" * 64, "2": "2" * 64, "3": "3" * 64}
RECORDS = [{"age": 30.0, "department": "Sales"}, {"age": 41.0, "department": "HR"}]


class FakeClock:
    """time.monotonic / time.sleep stand-ins: sleeping advances the clock, instantly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def smoke(url: str, version: str, sha256: str | None):
    return smoke_test(url, RECORDS, version, sha256, timeout=5)


@pytest.fixture
def k8s(tmp_path, monkeypatch):
    """(fake API server, fake Service, AppsV1Api from a kubeconfig, target, clock) for one scenario."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with fake_kubernetes() as (api_server, model_server):
        client = new_client_from_config(config_file=str(write_kubeconfig(tmp_path / "kubeconfig", api_server.url)))
        target = KubernetesTarget(namespace="ml", deployment="ct-serving", container="serving", url=model_server.url,
                                  rollout_timeout_s=10.0, poll_interval_s=0.5)
        yield api_server, model_server, AppsV1Api(client), target, FakeClock()
        client.close()


def deploy(k8s, version: str, **changes):
    _, _, api, target, clock = k8s
    if changes:
        target = KubernetesTarget(**{**target.__dict__, **changes})
    return deploy_kubernetes(MODEL, version, SHA[version], target, smoke=smoke, api=api, clock=clock,
                             sleep=clock.sleep)


def scenario(k8s, behaviors=None, broken=()):
    api_server, model_server, *_ = k8s
    api_server.cluster = FakeCluster(behaviors=behaviors)
    model_server.behaviour = ModelBehaviour(broken=set(broken))
    return api_server.cluster


# ---- rollout_state: the decision `kubectl rollout status` makes -------------------------------------

def _deployment(generation=2, observed=2, replicas=2, updated=2, total=2, available=2, conditions=()):
    return V1Deployment(
        metadata=V1ObjectMeta(name="ct-serving", generation=generation),
        spec=V1DeploymentSpec(replicas=replicas, selector=V1LabelSelector(match_labels={"a": "b"}),
                              template=V1PodTemplateSpec()),
        status=V1DeploymentStatus(observed_generation=observed, updated_replicas=updated, replicas=total,
                                  available_replicas=available, conditions=list(conditions)))


@pytest.mark.parametrize(("deployment", "done", "failed", "says"), [
    (_deployment(observed=1), False, False, "observe the new spec"),
    (_deployment(updated=1, total=3), False, False, "1 of 2 updated replicas"),
    (_deployment(total=3), False, False, "1 old replicas pending termination"),
    (_deployment(available=1), False, False, "1 of 2 updated replicas available"),
    (_deployment(), True, False, "2 of 2 replicas updated and available"),
    (_deployment(updated=1, total=3, conditions=[V1DeploymentCondition(
        type="Progressing", status="False", reason="ProgressDeadlineExceeded", message="timed out")]),
     False, True, "progress deadline exceeded: timed out"),
])
def test_rollout_state_decides_like_kubectl(deployment, done, failed, says):
    state = rollout_state(deployment)
    assert (state.done, state.failed) == (done, failed)
    assert says in state.message


# ---- the deployer against the fake API server ------------------------------------------------------

def test_deploy_patches_the_model_waits_smoke_tests_and_reports(k8s):
    cluster = scenario(k8s)
    initial = copy.deepcopy(cluster.template)
    result = deploy(k8s, "1")

    assert result.status == "deployed" and not result.rolled_back and result.ok
    assert result.target == "kubernetes" and result.version == "1" and result.previous_version is None
    assert result.url == k8s[3].url and "rolled out to ml/ct-serving" in result.detail
    assert result.smoke["passed"] and result.smoke["checks"] == ["health", "ready", "model", "predict"]
    assert json.loads(json.dumps(result.to_dict()))["status"] == "deployed"  # the JSON the DAG reads

    env = cluster.served_env()  # what the Service serves after the rollout
    assert env["CT_MODEL_URI"] == f"models:/{MODEL}/1" and env["CT_MODEL_VERSION"] == "1"
    assert env["CT_MODEL_SHA256"] == SHA["1"]
    untouched = {k: v for k, v in env.items() if not k.startswith("CT_MODEL_")}
    assert untouched == {k: v for k, v in cluster.served_env().items() if not k.startswith("CT_MODEL_")}
    assert untouched["CT_PORT"] == "8808" and untouched["CT_PREDICTION_LOG_DIR"] == "/var/lib/ct/predictions"
    template = cluster.template
    assert template["metadata"]["labels"][VERSION_LABEL] == "1"
    assert template["metadata"]["annotations"]["ct.ml/model-sha256"] == SHA["1"]
    assert "models:/employee-attrition/1" in cluster.deployment["metadata"]["annotations"][CHANGE_CAUSE]
    # Everything but the model is the template that was there (probes, security context, volumes...).
    assert template["spec"]["containers"][0]["securityContext"] == initial["spec"]["containers"][0]["securityContext"]
    assert template["spec"]["volumes"] == initial["spec"]["volumes"]

    patches = [r for r in cluster.requests if r.verb == "patch"]
    assert len(patches) == 1 and patches[0].content_type == SMP
    assert patches[0].query["fieldManager"] == ["ct-deployer"]
    assert {r.status for r in cluster.requests} == {200}
    # It polled through the unobserved and partial states rather than trusting the first read.
    assert cluster.calls().count(("get", "deployments")) >= 4


def test_redeploying_the_serving_version_changes_nothing(k8s):
    cluster = scenario(k8s)
    assert deploy(k8s, "1").status == "deployed"
    generation = cluster.deployment["metadata"]["generation"]
    cluster.requests.clear()

    again = deploy(k8s, "1")
    assert again.status == "unchanged" and not again.rolled_back and again.ok
    assert "already serving" in again.detail and again.smoke["passed"]
    assert ("patch", "deployments") not in cluster.calls()
    assert cluster.deployment["metadata"]["generation"] == generation


def test_rollout_timeout_rolls_back_to_the_template_it_replaced(k8s):
    cluster = scenario(k8s, behaviors={"2": "stuck"})
    assert deploy(k8s, "1").status == "deployed"
    before = copy.deepcopy(cluster.template)
    clock = k8s[4]
    start = clock.now

    result = deploy(k8s, "2")
    assert result.status == "rolled_back" and result.rolled_back and not result.ok
    assert result.version == "2" and result.previous_version == "1"
    assert "rollout not complete after 10s (deploy.kubernetes.rollout_timeout_s)" in result.detail
    assert "rolled ml/ct-serving back to v1" in result.detail and "passes the smoke test" in result.detail
    assert clock.now - start >= 10.0  # waited the whole budget first
    # The exact template is back (a JSON patch: test our label, replace the template).
    assert canonical_template(cluster.template) == canonical_template(before)
    assert cluster.served_env()["CT_MODEL_VERSION"] == "1"
    restore = [r for r in cluster.requests if r.verb == "patch"][-1]
    assert restore.content_type == JSON_PATCH
    assert restore.body[0] == {"op": "test", "path": "/spec/template/metadata/labels/ct.ml~1model-version",
                               "value": "2"}
    assert restore.body[1]["op"] == "replace" and restore.body[1]["path"] == "/spec/template"
    # The controller reused v1's ReplicaSet under a new revision instead of creating a fourth one.
    assert len([rs for rs in cluster.replicasets if rs["metadata"]["ownerReferences"][0]["name"] == "ct-serving"]) == 3


def test_progress_deadline_exceeded_rolls_back_without_waiting_for_the_timeout(k8s):
    cluster = scenario(k8s, behaviors={"2": "deadline"})
    assert deploy(k8s, "1").status == "deployed"
    clock = k8s[4]
    start = clock.now

    result = deploy(k8s, "2", rollout_timeout_s=600.0)
    assert result.status == "rolled_back" and result.rolled_back
    assert "progress deadline exceeded" in result.detail and "has timed out progressing" in result.detail
    assert clock.now - start < 10  # a few polls, not the 600 s budget
    assert cluster.served_env()["CT_MODEL_VERSION"] == "1"


def test_smoke_failure_rolls_back(k8s):
    cluster = scenario(k8s, broken={"2"})
    assert deploy(k8s, "1").status == "deployed"

    result = deploy(k8s, "2")
    assert result.status == "rolled_back" and result.rolled_back
    assert "smoke test failed: /predict/batch answered 500" in result.detail
    assert result.smoke["passed"] is False and result.smoke["checks"] == ["health", "ready", "model"]
    assert cluster.served_env()["CT_MODEL_VERSION"] == "1" and cluster.template["metadata"]["labels"][
        VERSION_LABEL] == "1"


def test_first_deploy_failing_restores_the_manifest_template(k8s):
    cluster = scenario(k8s, broken={"1"})
    initial = copy.deepcopy(cluster.template)

    result = deploy(k8s, "1")
    assert result.status == "rolled_back" and result.previous_version is None
    assert "back to models:/employee-attrition@champion" in result.detail
    assert canonical_template(cluster.template) == canonical_template(initial)
    assert cluster.served_env()["CT_MODEL_URI"] == "models:/employee-attrition@champion"


def test_rerun_of_a_serving_version_that_now_fails_goes_back_one_revision(k8s):
    cluster = scenario(k8s)
    assert deploy(k8s, "1").status == "deployed"
    v1_template = copy.deepcopy(cluster.template)
    assert deploy(k8s, "2").status == "deployed"
    k8s[1].behaviour.broken.add("2")  # v2 serves but now fails its smoke test (e.g. a re-run after an incident)
    cluster.requests.clear()

    result = deploy(k8s, "2")
    assert result.status == "rolled_back" and "v1 (revision 2)" in result.detail
    # No template was saved before this run (it changed nothing), so the deployer listed the ReplicaSets
    # and picked the newest one of this Deployment serving another model (not the canary's revision 99).
    assert ("list", "replicasets") in cluster.calls()
    listing = next(r for r in cluster.requests if r.verb == "list")
    assert listing.query["labelSelector"] == ["app.kubernetes.io/name=ct-serving"]
    assert canonical_template(cluster.template) == canonical_template(v1_template)
    assert cluster.served_env()["CT_MODEL_VERSION"] == "1"


def test_the_deployer_only_makes_calls_its_role_grants(k8s):
    cluster = scenario(k8s, behaviors={"3": "stuck"}, broken={"2"})
    for version in ("1", "2", "3", "1"):
        deploy(k8s, version)
    assert set(cluster.calls()) <= {("get", "deployments"), ("patch", "deployments"), ("list", "replicasets")}
    assert {r.status for r in cluster.requests} == {200}


def test_a_deployment_outside_the_role_is_refused_with_a_hint(k8s):
    cluster = scenario(k8s)
    with pytest.raises(DeployError, match=r"cannot read Deployment ml/other: 403 Forbidden.*Role needs get/patch"):
        deploy(k8s, "1", deployment="other")
    assert [r.status for r in cluster.requests] == [403]

"""The pods of the `kubernetes` training backend and deploy target, run for real as local processes.

No cluster exists here, so a stand-in kubelet (`LocalKubelet`) replaces KubernetesPodOperator.execute: it
takes the V1Pod the operator builds (`build_pod_request_obj()`, schema-checked) and runs that container's
command and args (the config guard, then `python -m ml train|deploy --config ... --run-key ...`) as a local
process with the pod's environment. The Secret named in envFrom supplies MLFLOW_TRACKING_URI (a temp
MLflow sqlite store shared with this "worker"), the emptyDir mounts become private temp folders (so results
can only travel through MLflow, as between a worker and a pod), and the deployer's service-account
credentials are a kubeconfig for the fake API server of tests/fake_kubernetes.py. Everything else is real:
the operators, the pod spec, the entrypoint, training, MLflow, the registry, the kubernetes client, the
smoke test against a fake Service answering with the registered ONNX model's own probabilities.

The steps before training run in this process, as the DAG's check group does in the worker.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import ApiClient

from ct_airflow.kubernetes import KubernetesDeployOperator, KubernetesTrainOperator, build_step_pod_operator
from ml.config import load_config
from tests.conftest import REPO, write_config
from tests.fake_kubernetes import FakeCluster, ModelBehaviour, canonical_template, fake_kubernetes, write_kubeconfig

RUN_KEY = "manual__2026-03-01T05:00:00+00:00"


class LocalKubelet:
    """Runs a pod's single container as a local process; stands in for KubernetesPodOperator.execute."""

    def __init__(self, root: Path, secrets: dict[str, dict[str, str]], kubeconfig: Path,
                 mounted: tuple[Path, ...] = ()) -> None:
        self.root, self.secrets, self.kubeconfig = root, secrets, kubeconfig
        self.mounted = tuple(str(p) for p in mounted)  # host folders standing in for ConfigMap/volume mounts
        self.runs: list[tuple[dict, subprocess.CompletedProcess]] = []

    def run(self, pod) -> subprocess.CompletedProcess:
        doc = ApiClient().sanitize_for_serialization(pod)
        kubernetes_validate.validate(doc, "1.33", strict=True)
        (container,) = pod.spec.containers
        workdir = self.root / pod.metadata.name
        mounts = {m.mount_path: workdir / m.name for m in container.volume_mounts or []}
        for local in mounts.values():
            local.mkdir(parents=True)

        def local_path(value: str) -> str:
            if value.startswith(self.mounted):
                return value
            for mount, local in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    return str(local) + value[len(mount):]
            return value

        # The image's own environment (docker/ml.Dockerfile: the code on PYTHONPATH, python on PATH).
        env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        for source in container.env_from or []:
            env |= self.secrets[source.secret_ref.name]
        env |= {e.name: local_path(e.value) for e in container.env or []}
        if pod.spec.automount_service_account_token:  # the mounted token, as a kubeconfig
            env["KUBECONFIG"] = str(self.kubeconfig)
        process = subprocess.run([*container.command, *container.args], env=env, cwd=workdir, capture_output=True,
                                 text=True, timeout=300)
        self.runs.append((doc, process))
        return process

    def install(self, monkeypatch: pytest.MonkeyPatch) -> LocalKubelet:
        kubelet = self

        def execute(pod_operator: KubernetesPodOperator, context: object) -> None:
            pod = pod_operator.build_pod_request_obj(dry_run=True)
            process = kubelet.run(pod)
            if process.returncode != 0:  # what KubernetesPodOperator raises for a failed pod
                raise AirflowException(f"Pod {pod.metadata.name} returned a failure.\n{process.stderr[-500:]}")

        monkeypatch.setattr(KubernetesPodOperator, "execute", execute)
        return self


@pytest.fixture(scope="module")
def fakes():
    with fake_kubernetes() as servers:
        yield servers


@pytest.fixture(scope="module")
def config_path(tmp_path_factory, fakes) -> Path:
    """The model config as both Airflow and the pods read it (training/deploy.kubernetes.config_path)."""
    folder = tmp_path_factory.mktemp("config")
    path = folder / "model.yaml"
    _, model = fakes
    return write_config(folder, training={"backend": "kubernetes", "kubernetes": {"config_path": str(path)}},
                        deploy={"target": "kubernetes", "kubernetes": {
                            "config_path": str(path), "service_url": model.url, "rollout_timeout_s": 30,
                            "poll_interval_s": 0.05}})


@pytest.fixture(scope="module")
def kubelet(module_ct_home, tmp_path_factory, fakes, config_path) -> LocalKubelet:
    from ml.tracking import tracking_uri

    api, _ = fakes
    root = tmp_path_factory.mktemp("pods")
    secrets = {"mlflow-credentials": {"MLFLOW_TRACKING_URI": tracking_uri()}}
    # The config folder plays a ConfigMap mounted at training/deploy.kubernetes.config_path.
    return LocalKubelet(root, secrets, write_kubeconfig(root / "kubeconfig", api.url), mounted=(config_path.parent,))


@pytest.fixture(scope="module")
def trained(kubelet, config_path):
    """validate, drift, performance, decide in this process; then the train step in its pod."""
    from ml.pipeline import run_step
    from ml.tracking import open_run

    ctx = open_run(load_config(config_path), RUN_KEY)
    run_step("validate", ctx, dag_id="retraining", dag_run_id=RUN_KEY)
    run_step("drift", ctx)
    run_step("performance", ctx)
    assert run_step("decide", ctx, force_retrain=True).result.decision == "retrain"
    with pytest.MonkeyPatch.context() as mp:
        kubelet.install(mp)
        summary = KubernetesTrainOperator(task_id="train_kubernetes", config_path=str(config_path),
                                          run_key=RUN_KEY).execute({})
    return ctx, summary, kubelet.runs[-1]


@pytest.fixture(scope="module")
def registered(trained, fakes):
    """Gates and registration in this process, from what the pod logged to MLflow; the fake Service then
    answers with that ONNX model's probabilities."""
    import pandas as pd

    from ml.data import model_frame
    from ml.export import OnnxModel
    from ml.pipeline import run_step
    from ml.registry import fetch_onnx
    from ml.state import RunState, Step
    from ml.train import TrainResult

    ctx, summary, _ = trained
    assert run_step("gates", ctx).result.passed
    version = run_step("register", ctx).result.version
    path, sha256 = fetch_onnx(ctx.client, ctx.config.name, version, ctx.work_dir / "registered")
    model = OnnxModel.load(path, expected_sha256=sha256)
    classes = [str(c) for c in RunState.load(ctx).require(Step.TRAIN, TrainResult).classes]

    def predict(served_version: str, records: list[dict]) -> list[dict[str, float]]:
        assert served_version == version
        proba = model.predict_proba(model_frame(pd.DataFrame(records), ctx.config))
        return [dict(zip(classes, map(float, row), strict=True)) for row in proba]

    _, model_server = fakes
    model_server.behaviour = ModelBehaviour(predict=predict)
    return version, sha256


def test_training_pod_runs_python_m_ml_train_and_reports_through_mlflow(trained, config_path, kubelet):
    ctx, summary, (pod, process) = trained
    assert process.returncode == 0, process.stderr[-3000:]
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["train", "--config", str(config_path), "--run-key", RUN_KEY]
    assert pod["spec"]["serviceAccountName"] == "ct-trainer" and pod["spec"]["automountServiceAccountToken"] is False
    printed = json.loads(process.stdout)  # the CLI's one JSON document
    assert printed["run_key"] == RUN_KEY and printed["model_uri"].startswith("models:/")
    assert summary == {"run_key": RUN_KEY, "mlflow_run_id": ctx.mlflow_run_id,
                       **{k: printed[k] for k in ("model_id", "model_uri", "onnx_sha256", "estimator", "train_rows",
                                                  "eval_rows", "eval_source", "eval_folds", "metrics")}}
    assert summary["metrics"]["roc_auc"] > 0.5
    # The pod trained in its own scratch space; this worker has no local copy of the challenger.
    assert not (ctx.work_dir / "challenger" / "model.onnx").exists()
    scratch = kubelet.root / pod["metadata"]["name"] / "tmp" / "ct"  # the pod's CT_HOME=/tmp/ct (emptyDir)
    assert list(scratch.rglob("model.onnx"))


def test_deploy_pod_rolls_out_smoke_tests_and_reports(registered, fakes, kubelet, config_path, monkeypatch):
    version, sha256 = registered
    api, _ = fakes
    api.cluster = FakeCluster()
    kubelet.install(monkeypatch)
    summary = KubernetesDeployOperator(task_id="deploy_kubernetes", config_path=str(config_path),
                                       run_key=RUN_KEY).execute({})

    pod, process = kubelet.runs[-1]
    assert process.returncode == 0, process.stderr[-3000:]
    assert pod["spec"]["serviceAccountName"] == "ct-deployer" and pod["spec"]["automountServiceAccountToken"] is True
    printed = json.loads(process.stdout)
    assert printed["status"] == "deployed" and printed["version"] == version and printed["run_key"] == RUN_KEY
    assert printed["smoke"]["checks"] == ["health", "ready", "model", "predict"]
    assert summary["status"] == "deployed" and summary["version"] == version and summary["rolled_back"] is False
    served = api.cluster.served_env()
    assert served["CT_MODEL_URI"] == f"models:/employee-attrition/{version}"
    assert served["CT_MODEL_VERSION"] == version and served["CT_MODEL_SHA256"] == sha256
    assert set(api.cluster.calls()) == {("get", "deployments"), ("patch", "deployments")}


def test_deploy_pod_that_fails_its_smoke_test_rolls_back_exits_1_and_fails_the_task(
        registered, fakes, kubelet, config_path, monkeypatch):
    version, _ = registered
    api, model_server = fakes
    api.cluster = FakeCluster()
    initial = copy.deepcopy(api.cluster.template)
    model_server.behaviour.broken.add(version)
    kubelet.install(monkeypatch)
    try:
        with pytest.raises(AirflowFailException, match=r"deploy rolled_back: .*smoke test failed"):
            KubernetesDeployOperator(task_id="deploy_kubernetes", config_path=str(config_path),
                                     run_key=RUN_KEY).execute({})
    finally:
        model_server.behaviour.broken.discard(version)

    _, process = kubelet.runs[-1]
    assert process.returncode == 1  # `python -m ml deploy`: not deployed -> non-zero, with the JSON result
    printed = json.loads(process.stdout)
    assert printed["status"] == "rolled_back" and printed["rolled_back"] is True and printed["version"] == version
    assert "error: deploy rolled_back" in process.stderr
    assert canonical_template(api.cluster.template) == canonical_template(initial)
    assert api.cluster.served_env()["CT_MODEL_URI"] == "models:/employee-attrition@champion"


def test_the_config_guard_stops_a_pod_whose_config_is_not_the_one_airflow_read(kubelet, config_path, tmp_path):
    config = load_config(config_path)
    stale = build_step_pod_operator(config, step="train", task_id="t", run_key=RUN_KEY, config_sha256="0" * 64)
    process = kubelet.run(stale.build_pod_request_obj(dry_run=True))
    assert process.returncode == 2 and "is not the config Airflow validated" in process.stderr
    baked = load_config(write_config(tmp_path / "c"))  # expects the image's /app/configs/model.yaml
    missing = build_step_pod_operator(baked, step="train", task_id="t", run_key=RUN_KEY, config_sha256=None)
    process = kubelet.run(missing.build_pod_request_obj(dry_run=True))
    assert process.returncode == 2 and "model config /app/configs/model.yaml is not in the pod" in process.stderr

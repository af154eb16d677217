"""Pipeline steps in Kubernetes pods: the `kubernetes` training backend and deploy target.

    KubernetesTrainOperator   -> pod running `python -m ml train  --config ... --run-key <run id>`
    KubernetesDeployOperator  -> pod running `python -m ml deploy --config ... --run-key <run id>`
                                 (the deployer, ml.deploy.kubernetes: patch, wait, smoke test, roll back)
    (ct_airflow.serving)      -> pod running `python -m ml batch --config ...` (batch scoring)

The pod is a KubernetesPodOperator built at run time by `build_step_pod_operator` from the model
config (image, namespace, service account, resources: `training.kubernetes` / `deploy.kubernetes`),
because the config is read at run time, never at parse time, and because importing the Kubernetes
client costs ~0.9 s that DAG parsing must not pay. `ct_airflow.remote.RemoteStepOperator` runs that pod
operator (deferrable when `deferrable=True` or `[operators] default_deferrable`) and forwards its
re-entry and `on_kill`.

Config delivery: the pod reads the model config from the image (/app/configs/<file name>, see
docker/ml.Dockerfile) or from `config_path` (e.g. a mounted ConfigMap). Before running, the pod checks
that the file's sha256 is the one of the file Airflow read (env CT_CONFIG_SHA256), so a stale image fails
with exit code 2 instead of training on another config. MLFLOW_TRACKING_URI and any artifact-store
credentials come from the Secret `mlflow_secret` (envFrom), never from Airflow literals.

Results travel through MLflow (steps/<step>.json of the run), not an XCom sidecar (see ct_airflow.remote).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_airflow.remote import RemoteStepOperator

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import Context

    from ml.config import ModelConfig

IMAGE_CONFIG_DIR = "/app/configs"
POD_USER_ID = 10001  # the non-root user of docker/ml.Dockerfile

#: Runs in the pod before the step: the config must be there and be the very file Airflow read.
CONFIG_GUARD = (
    'if [ ! -f "$CT_CONFIG" ]; then echo "error: model config $CT_CONFIG is not in the pod: bake it into the '
    'image under /app/configs or mount it (training.kubernetes.config_path, deploy.kubernetes.config_path)" >&2; '
    'exit 2; fi; '
    'if [ -n "${CT_CONFIG_SHA256:-}" ] && [ "$(sha256sum "$CT_CONFIG" | cut -d " " -f 1)" != "$CT_CONFIG_SHA256" ]; '
    'then echo "error: $CT_CONFIG in the pod is not the config Airflow validated (sha256 $CT_CONFIG_SHA256): '
    'build the image from the same commit or mount the same file" >&2; exit 2; fi; '
    'exec python -m ml "$@"'
)


@dataclass(frozen=True)
class StepPod:
    """Everything about the pod of one step that comes from the model config."""

    step: str
    component: str
    connection_id: str
    image: str
    image_pull_policy: str
    namespace: str
    service_account: str
    cpu: str
    memory: str
    env_secret: str
    config_path: str
    automount_token: bool
    tmp_size: str
    active_deadline_s: int
    startup_timeout_s: int
    node_selector: dict[str, str] = field(default_factory=dict)
    #: (PersistentVolumeClaim, mount path) of a data volume, e.g. batch.volume_claim / batch.mount_path
    data_volume: tuple[str, str] | None = None

    @classmethod
    def for_step(cls, config: ModelConfig, step: str) -> StepPod:
        default_path = f"{IMAGE_CONFIG_DIR}/{Path(config.source or 'model.yaml').name}"
        if step in ("train", "batch"):  # batch scoring: the trainer's image, namespace and resources
            k8s = config.training.kubernetes
            pod = cls(step=step, component="trainer", connection_id=k8s.connection_id, image=k8s.image,
                      image_pull_policy=k8s.image_pull_policy, namespace=k8s.namespace,
                      service_account=k8s.service_account, cpu=k8s.cpu, memory=k8s.memory,
                      env_secret=k8s.mlflow_secret, config_path=k8s.config_path or default_path,
                      automount_token=False, tmp_size="4Gi", active_deadline_s=k8s.timeout_s,
                      startup_timeout_s=k8s.startup_timeout_s, node_selector=dict(k8s.node_selector))
            if step == "train":
                return pod
            return replace(pod, component="batch-scorer", tmp_size="2Gi",
                           data_volume=(config.batch.volume_claim, config.batch.mount_path)
                           if config.batch.volume_claim else None)
        if step == "deploy":
            k8s = config.deploy.kubernetes
            # Two rollouts (forward and back) plus start-up and the model download.
            deadline = 2 * k8s.rollout_timeout_s + 600
            return cls(step=step, component="deployer", connection_id=k8s.connection_id, image=k8s.deployer_image,
                       image_pull_policy=k8s.image_pull_policy, namespace=k8s.namespace,
                       service_account=k8s.service_account, cpu=k8s.cpu, memory=k8s.memory,
                       env_secret=k8s.mlflow_secret, config_path=k8s.config_path or default_path,
                       automount_token=True, tmp_size="1Gi", active_deadline_s=deadline, startup_timeout_s=600)
        raise ValueError(f"no pod for step '{step}': steps run in pods are 'train', 'deploy' and 'batch'")


def _locked_down() -> dict[str, Any]:
    """The pod's and the container's security contexts: non-root, no privileges, read-only root, seccomp."""
    from kubernetes.client import models as k8s

    seccomp = k8s.V1SeccompProfile(type="RuntimeDefault")
    return {
        "security_context": k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=POD_USER_ID, run_as_group=POD_USER_ID, fs_group=POD_USER_ID,
            seccomp_profile=seccomp),
        "container_security_context": k8s.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            privileged=False, capabilities=k8s.V1Capabilities(drop=["ALL"]), seccomp_profile=seccomp),
    }


def _volumes(pod: StepPod) -> dict[str, list[Any]]:
    """The pod's writable /tmp (an emptyDir: the root file system is read-only) and its data volume, if any."""
    from kubernetes.client import models as k8s

    volumes = [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=pod.tmp_size))]
    mounts = [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
    if pod.data_volume:
        claim, path = pod.data_volume
        volumes.append(k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=claim)))
        mounts.append(k8s.V1VolumeMount(name="data", mount_path=path))
    return {"volumes": volumes, "volume_mounts": mounts}


def build_step_pod_operator(config: ModelConfig, *, step: str, task_id: str, run_key: str,
                            config_sha256: str | None, reference_path: str | None = None,
                            current_path: str | None = None, dag_id: str | None = None,
                            deferrable: bool = False, arguments: list[str] | None = None,
                            **kwargs: Any) -> KubernetesPodOperator:
    """The KubernetesPodOperator running one step of `config` in a locked-down pod (rendered values only);
    `arguments` replaces the step's `python -m ml` arguments (ml.cli.step_argv), e.g. ml.cli.batch_argv.

    Extra keyword arguments go to KubernetesPodOperator (e.g. config_file, poll_interval, execution_timeout).
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
    from kubernetes.client import models as k8s

    from ml.cli import step_argv

    pod = StepPod.for_step(config, step)
    env = {"CT_CONFIG": pod.config_path, "CT_HOME": "/tmp/ct", "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
    if config_sha256:
        env["CT_CONFIG_SHA256"] = config_sha256
    if dag_id:  # who moved what, in the registry's audit log (ml.registry.actor)
        env |= {"AIRFLOW_CTX_DAG_ID": dag_id, "AIRFLOW_CTX_DAG_RUN_ID": run_key}
    options: dict[str, Any] = {
        "on_finish_action": "delete_succeeded_pod",  # failed pods stay for `kubectl logs/describe`
        "get_logs": True,
        "log_events_on_failure": True,
        # A pod that fails before the step stores its result (config guard, import error) still says why.
        "termination_message_policy": "FallbackToLogsOnError",
        "do_xcom_push": False,  # results go through MLflow, no sidecar
        **kwargs,
    }
    return KubernetesPodOperator(
        task_id=task_id,
        kubernetes_conn_id=pod.connection_id,
        namespace=pod.namespace,
        name=f"ct-{pod.component}",
        image=pod.image,
        image_pull_policy=pod.image_pull_policy,
        cmds=["/bin/sh", "-c", CONFIG_GUARD, "ct"],
        arguments=arguments or step_argv(step, pod.config_path, run_key, reference_path, current_path),
        env_vars=[k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=pod.env_secret, optional=False))],
        labels={"app.kubernetes.io/name": "ct-retraining", "app.kubernetes.io/component": pod.component,
                "app.kubernetes.io/part-of": "ct", "ct.ml/model": make_safe_label_value(config.name)},
        annotations={"ct.ml/run-key": run_key, "ct.ml/model": config.name},
        service_account_name=pod.service_account,
        automount_service_account_token=pod.automount_token,
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": pod.cpu, "memory": pod.memory, "ephemeral-storage": "256Mi"},
            limits={"memory": pod.memory}),
        **_locked_down(),
        **_volumes(pod),
        node_selector=pod.node_selector or None,
        active_deadline_seconds=pod.active_deadline_s,
        startup_timeout_seconds=pod.startup_timeout_s,
        deferrable=deferrable,
        **options,
    )


class KubernetesStepOperator(RemoteStepOperator):
    """Run one pipeline step (`python -m ml <step>`) in a pod described by the model config.

    :param poll_interval: seconds between pod status polls
    """

    ui_color = "#d6e6ff"

    def __init__(self, *, poll_interval: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_interval = poll_interval

    def inner_operator(self, context: Context) -> KubernetesPodOperator:
        from ml.config import config_sha256, load_config

        return build_step_pod_operator(
            load_config(self.config_path), step=self.step, task_id=self.task_id, run_key=self.run_key,
            config_sha256=config_sha256(self.config_path), reference_path=self.reference_path or None,
            current_path=self.current_path or None, dag_id=self.dag_id if self.has_dag() else None,
            deferrable=self.deferrable_mode(), poll_interval=self.poll_interval,
            execution_timeout=self.execution_timeout)


class KubernetesTrainOperator(KubernetesStepOperator):
    """Train the challenger in a pod (backend `kubernetes`, config `training.kubernetes`)."""

    step = "train"
    ui_color = "#fff3d6"


class KubernetesDeployOperator(KubernetesStepOperator):
    """Roll the serving Deployment to the registered version from the deployer pod (target `kubernetes`,
    config `deploy.kubernetes`): wait, smoke-test, roll back on failure."""

    step = "deploy"
    ui_color = "#dde8fb"

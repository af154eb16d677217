"""Pipeline steps in Kubernetes pods: the `kubernetes` training backend and deploy target.

    KubernetesTrainOperator   -> pod running `python -m ml train  --config ... --run-key <run id>`
    KubernetesDeployOperator  -> pod running `python -m ml deploy --config ... --run-key <run id>`
                                 (the deployer, ml.deploy.kubernetes: patch, wait, smoke test, roll back)

The pod is a KubernetesPodOperator built at run time by `build_step_pod_operator` from the model
config (image, namespace, service account, resources: `training.kubernetes` / `deploy.kubernetes`),
because the config is read at run time, never at parse time, and because importing the Kubernetes
client costs ~0.9 s that DAG parsing must not pay. The operators delegate `execute`, the deferral
re-entry (`trigger_reentry`, deferrable when `deferrable=True` or `[operators] default_deferrable`) and
`on_kill` to that pod operator.

Config delivery: the pod reads the model config from the image (/app/configs/<file name>, see
docker/ml.Dockerfile) or from `config_path` (e.g. a mounted ConfigMap). Before running, the pod checks
that the file's sha256 is the one of the file Airflow read (env CT_CONFIG_SHA256), so a stale image fails
with exit code 2 instead of training on another config. MLFLOW_TRACKING_URI and any artifact-store
credentials come from the Secret `mlflow_secret` (envFrom), never from Airflow literals.

Results travel through MLflow (steps/<step>.json of the run), not an XCom sidecar: after the pod, the
operator reads the step's result of this attempt and returns its summary; when the pod failed because
the step failed (a rolled-back deploy, bad data), the task fails without retry with the step's message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ct_airflow.operators import _SUMMARY_KEYS, _PipelineMixin

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import Context

    from ml.config import ModelConfig
    from ml.tracking import RunContext

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

    @classmethod
    def for_step(cls, config: ModelConfig, step: str) -> StepPod:
        default_path = f"{IMAGE_CONFIG_DIR}/{Path(config.source or 'model.yaml').name}"
        if step == "train":
            k8s = config.training.kubernetes
            return cls(step=step, component="trainer", connection_id=k8s.connection_id, image=k8s.image,
                       image_pull_policy=k8s.image_pull_policy, namespace=k8s.namespace,
                       service_account=k8s.service_account, cpu=k8s.cpu, memory=k8s.memory,
                       env_secret=k8s.mlflow_secret, config_path=k8s.config_path or default_path,
                       automount_token=False, tmp_size="4Gi", active_deadline_s=k8s.timeout_s,
                       startup_timeout_s=k8s.startup_timeout_s, node_selector=dict(k8s.node_selector))
        if step == "deploy":
            k8s = config.deploy.kubernetes
            # Two rollouts (forward and back) plus start-up and the model download.
            deadline = 2 * k8s.rollout_timeout_s + 600
            return cls(step=step, component="deployer", connection_id=k8s.connection_id, image=k8s.deployer_image,
                       image_pull_policy=k8s.image_pull_policy, namespace=k8s.namespace,
                       service_account=k8s.service_account, cpu=k8s.cpu, memory=k8s.memory,
                       env_secret=k8s.mlflow_secret, config_path=k8s.config_path or default_path,
                       automount_token=True, tmp_size="1Gi", active_deadline_s=deadline, startup_timeout_s=600)
        raise ValueError(f"no pod for step '{step}': steps run in pods are 'train' and 'deploy'")


def step_arguments(step: str, config_path: str, run_key: str, reference_path: str | None = None,
                   current_path: str | None = None) -> list[str]:
    """Arguments of `python -m ml` in the pod (the container command is the CONFIG_GUARD shell)."""
    args = [step, "--config", config_path, "--run-key", run_key]
    if reference_path:
        args += ["--reference", reference_path]
    if current_path:
        args += ["--current", current_path]
    return args


def build_step_pod_operator(config: ModelConfig, *, step: str, task_id: str, run_key: str,
                            config_sha256: str | None, reference_path: str | None = None,
                            current_path: str | None = None, dag_id: str | None = None,
                            deferrable: bool = False, **kwargs: Any) -> KubernetesPodOperator:
    """The KubernetesPodOperator running one step of `config` in a locked-down pod (rendered values only).

    Extra keyword arguments go to KubernetesPodOperator (e.g. config_file, poll_interval, execution_timeout).
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value
    from kubernetes.client import models as k8s

    pod = StepPod.for_step(config, step)
    env = {"CT_CONFIG": pod.config_path, "CT_HOME": "/tmp/ct", "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}
    if config_sha256:
        env["CT_CONFIG_SHA256"] = config_sha256
    if dag_id:  # who moved what, in the registry's audit log (ml.registry.actor)
        env |= {"AIRFLOW_CTX_DAG_ID": dag_id, "AIRFLOW_CTX_DAG_RUN_ID": run_key}
    seccomp = k8s.V1SeccompProfile(type="RuntimeDefault")
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
        arguments=step_arguments(step, pod.config_path, run_key, reference_path, current_path),
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
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=POD_USER_ID, run_as_group=POD_USER_ID, fs_group=POD_USER_ID,
            seccomp_profile=seccomp),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            privileged=False, capabilities=k8s.V1Capabilities(drop=["ALL"]), seccomp_profile=seccomp),
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=pod.tmp_size))],
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        node_selector=pod.node_selector or None,
        active_deadline_seconds=pod.active_deadline_s,
        startup_timeout_seconds=pod.startup_timeout_s,
        deferrable=deferrable,
        **options,
    )


def config_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_deferrable() -> bool:
    """`[operators] default_deferrable`, read at run time."""
    from airflow.sdk.configuration import conf

    return conf.getboolean("operators", "default_deferrable", fallback=False)


class RemoteStepMixin(_PipelineMixin):
    """A step that runs elsewhere (pod, Databricks job) and stores its result in the MLflow run state."""

    step: str = ""
    template_fields: Sequence[str] = ("config_path", "reference_path", "current_path", "run_key")

    def __init__(self, *, config_path: str, reference_path: str | None = None, current_path: str | None = None,
                 run_key: str = "{{ run_id }}", deferrable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.reference_path = reference_path
        self.current_path = current_path
        self.run_key = run_key
        self.deferrable = deferrable

    def _step_result(self, ctx: RunContext) -> dict[str, Any] | None:
        """The step's stored result, only if it belongs to this attempt (the one `validate` drew)."""
        validate = ctx.load("validate") or {}
        result = ctx.load(self.step)
        if result is None or result.get("attempt") != validate.get("attempt"):
            return None
        return result

    def _summary(self) -> dict[str, Any]:
        ctx = self._context()
        result = self._step_result(ctx)
        if result is None or "error" in result:
            raise AirflowException(
                f"the remote '{self.step}' finished but run {self.run_key!r} holds no '{self.step}' result of this "
                "attempt in MLflow: does the remote side use the same MLFLOW_TRACKING_URI as Airflow?")
        summary = {k: result[k] for k in _SUMMARY_KEYS.get(self.step, ()) if k in result}
        self.log.info("%s: %s", self.step, summary)
        return {"run_key": self.run_key, "mlflow_run_id": ctx.mlflow_run_id, **summary}

    def _remote_failed(self, exc: BaseException) -> None:
        """Fail without retry when the step itself failed (its error is in the run state); otherwise
        (pod eviction, image pull, API trouble) re-raise for the task's retries."""
        import ml.errors

        try:
            result = self._step_result(self._context())
        except Exception:  # MLflow unreachable: nothing to learn, keep the original failure
            self.log.warning("could not read the '%s' result from MLflow", self.step, exc_info=True)
            raise exc from None
        if result is None:
            raise exc
        if "error" in result:
            error_type = getattr(ml.errors, str(result.get("error_type")), None)
            if isinstance(error_type, type) and getattr(error_type, "retryable", False):
                raise exc
            raise AirflowFailException(f"{self.step} failed: {result['error']}") from exc
        if result.get("status") not in (None, "deployed", "unchanged"):
            raise AirflowFailException(f"{self.step} {result['status']}: {result.get('detail')}") from exc
        raise exc


class KubernetesStepOperator(RemoteStepMixin, BaseOperator):
    """Run one pipeline step (`python -m ml <step>`) in a pod described by the model config.

    :param config_path: path of the model config YAML as Airflow sees it (templated)
    :param reference_path: reference window override passed to the pod as typed, empty for none (templated)
    :param current_path: current window override passed to the pod as typed, empty for none (templated)
    :param run_key: the pipeline run; default the Airflow run id (templated)
    :param deferrable: wait for the pod in the triggerer; None = `[operators] default_deferrable`
    :param poll_interval: seconds between pod status polls
    """

    ui_color = "#d6e6ff"

    def __init__(self, *, poll_interval: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_interval = poll_interval
        self._pod: KubernetesPodOperator | None = None

    def pod_operator(self) -> KubernetesPodOperator:
        """The KubernetesPodOperator for the rendered fields (reads the config file)."""
        from ml.config import load_config

        config = load_config(self.config_path)
        self._pod = build_step_pod_operator(
            config, step=self.step, task_id=self.task_id, run_key=self.run_key,
            config_sha256=config_sha256(self.config_path), reference_path=self.reference_path or None,
            current_path=self.current_path or None, dag_id=self.dag_id if self.has_dag() else None,
            deferrable=default_deferrable() if self.deferrable is None else bool(self.deferrable),
            poll_interval=self.poll_interval, execution_timeout=self.execution_timeout)
        return self._pod

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            pod = self.pod_operator()
        except Exception as exc:
            self._fail(exc)
            raise
        try:
            pod.execute(context)  # deferrable: raises TaskDeferred (a BaseException) to come back below
        except Exception as exc:
            self._remote_failed(exc)
        return self._summary()

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Resume after the trigger saw the pod finish: logs, clean-up, then the step's result."""
        try:
            self.pod_operator().trigger_reentry(context, event)
        except Exception as exc:
            self._remote_failed(exc)
        return self._summary()

    def on_kill(self) -> None:
        if self._pod is not None:
            self._pod.on_kill()


class KubernetesTrainOperator(KubernetesStepOperator):
    """Train the challenger in a pod (backend `kubernetes`, config `training.kubernetes`)."""

    step = "train"
    ui_color = "#fff3d6"


class KubernetesDeployOperator(KubernetesStepOperator):
    """Roll the serving Deployment to the registered version from the deployer pod (target `kubernetes`,
    config `deploy.kubernetes`): wait, smoke-test, roll back on failure."""

    step = "deploy"
    ui_color = "#dde8fb"

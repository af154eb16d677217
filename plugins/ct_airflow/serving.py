"""Operators that work on the served model rather than on a retraining run: batch scoring and the monitor.

    BatchScoreOperator         the batch DAG's `score_local`: ml.batch.score_batch in the worker
    KubernetesBatchOperator    the batch DAG's `score_kubernetes`: `python -m ml batch` in a pod
                               (ct_airflow.kubernetes.build_step_pod_operator, pod settings of training.kubernetes)
    MonitorBranchOperator      the monitor DAG's `check`: ml.monitor.check_serving, then `trigger_retrain` or
                               `healthy`; XCom `report` (the summary) and `retrain_conf` (the retraining params)

Both batch operators score the version the triggering `<name>.champion` Asset event names (its extra:
version and sha256), so a batch run started by a promotion scores with exactly the promoted file even if
`champion` moved again since; a scheduled or manual run scores with whatever `champion` names.
`__init__` only assigns; `ml` is imported in `execute`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseBranchOperator, BaseOperator

from ct_airflow.operators import fail_task

if TYPE_CHECKING:
    from airflow.sdk import Context

BATCH_FIELDS = ("config_path", "input_path", "output_path", "run_key")


def promoted_model(context: Context, model_name: str) -> tuple[str | None, str | None]:
    """(models:/<name>/<version>, sha256) of the newest `<name>.champion` event that triggered the run, else
    (None, None): score with the champion alias."""
    events = (context.get("triggering_asset_events") or {})
    for asset, asset_events in events.items():
        if getattr(asset, "name", None) != f"{model_name}.champion" or not asset_events:
            continue
        extra = asset_events[-1].extra or {}
        if extra.get("version"):
            return f"models:/{model_name}/{extra['version']}", extra.get("sha256")
    return None, None


class _BatchOperator(BaseOperator):
    """The fields both batch operators render.

    :param config_path: path of the model config YAML (templated)
    :param input_path: the rows to score; empty = batch.input_path (templated)
    :param output_path: a .parquet file or a folder; empty = batch.output_path (templated)
    :param run_key: names the output file and the log file; default the Airflow run id (templated)
    """

    template_fields: Sequence[str] = BATCH_FIELDS
    ui_color = "#e3f0fb"

    def __init__(self, *, config_path: str, input_path: str | None = None, output_path: str | None = None,
                 run_key: str = "{{ run_id }}", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.input_path = input_path
        self.output_path = output_path
        self.run_key = run_key


class BatchScoreOperator(_BatchOperator):
    """Score the batch input with the champion in the worker (ml.batch.score_batch)."""

    def execute(self, context: Context) -> dict[str, Any]:
        from ml.batch import score_batch
        from ml.config import load_config

        try:
            config = load_config(self.config_path)
            model_uri, sha256 = promoted_model(context, config.name)
            result = score_batch(config, self.input_path or None, self.output_path or None, run_key=self.run_key,
                                 model_uri=model_uri, expected_sha256=sha256)
        except Exception as exc:
            fail_task(exc)
        self.log.info("batch: %s", result.summary())
        return result.summary()


class KubernetesBatchOperator(_BatchOperator):
    """Score the batch input in a pod (`python -m ml batch`); the pod reads and writes the paths as it sees
    them (object storage or a mounted volume), so `batch.output_path` is required.

    :param poll_interval: seconds between pod status polls
    """

    def __init__(self, *, poll_interval: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_interval = poll_interval

    def pod_operator(self, context: Context) -> BaseOperator:
        """The KubernetesPodOperator of this run (rendered fields; reads the config file)."""
        from ct_airflow.kubernetes import StepPod, build_step_pod_operator
        from ml.cli import batch_argv
        from ml.config import config_sha256, load_config
        from ml.errors import ConfigError

        config = load_config(self.config_path)
        output = self.output_path or config.batch.output_path
        if not output:
            raise ConfigError(f"{self.config_path}: batch.backend kubernetes needs batch.output_path (a path the "
                              "pod writes to: object storage or a mounted volume)")
        model_uri, sha256 = promoted_model(context, config.name)
        arguments = batch_argv(StepPod.for_step(config, "batch").config_path, self.run_key, self.input_path or None,
                               output, model_uri, sha256)
        return build_step_pod_operator(config, step="batch", task_id=self.task_id, run_key=self.run_key,
                                       config_sha256=config_sha256(self.config_path),
                                       dag_id=self.dag_id if self.has_dag() else None,
                                       arguments=arguments, poll_interval=self.poll_interval,
                                       execution_timeout=self.execution_timeout)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            pod = self.pod_operator(context)
        except Exception as exc:
            fail_task(exc)
        pod.execute(context)
        return {"backend": "kubernetes", "run_key": self.run_key, "arguments": pod.arguments}


class MonitorBranchOperator(BaseBranchOperator):
    """Check the served model's traffic (ml.monitor.check_serving) and follow `trigger_task_id` when
    retraining is due, else `healthy_task_id`.

    :param config_path: path of the model config YAML (templated)
    :param prediction_log: the prediction log to read; empty = monitoring.prediction_log (templated)
    :param trigger_task_id: the task that starts the retraining run
    :param healthy_task_id: the task to follow when nothing is wrong
    """

    template_fields: Sequence[str] = ("config_path", "prediction_log")
    ui_color = "#fbe9e3"

    def __init__(self, *, config_path: str, trigger_task_id: str, healthy_task_id: str,
                 prediction_log: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.prediction_log = prediction_log
        self.trigger_task_id = trigger_task_id
        self.healthy_task_id = healthy_task_id

    def choose_branch(self, context: Context) -> str:
        from ml.config import load_config
        from ml.monitor import check_serving

        run_after = getattr(context.get("dag_run"), "run_after", None)
        try:
            config = load_config(self.config_path)
            report = check_serving(config, self.prediction_log or None, as_of=run_after)
        except Exception as exc:
            fail_task(exc)
        self.log.info("monitor: %s", report.to_dict())
        context["ti"].xcom_push(key="report", value=report.summary())
        context["ti"].xcom_push(key="retrain_conf", value=report.retrain_conf(config.monitoring.force_retrain))
        return self.trigger_task_id if report.retrain else self.healthy_task_id

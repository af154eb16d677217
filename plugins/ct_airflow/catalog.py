"""The models Airflow runs: every `*.yaml` in the config folder, each with its DAG ids, schedule and Assets.

    config folder   $CT_CONFIG_DIR, default <repository>/configs (one YAML per model; README "Add a model")
    DAG ids         `<name>.retrain` (dags/retraining.py), `<name>.rollback` (dags/rollback.py),
                    `<name>.monitor` (dags/monitoring.py) and, with batch.input_path, `<name>.batch`
                    (dags/batch.py), from the config's `name`: the suffixes differ, so no two models' DAGs can
                    share an id
    Assets          `<name>.current_window`: the model's current window (URI: data.current, or
                    x-ct-window://<name> when the config has none); an event on it starts the model's run
                    when the schedule lists `current_window`. `<name>.champion` (URI
                    models:/<name>@champion): every promotion and rollback emits an event whose extra holds
                    the version and its sha256, for downstream DAGs (batch scoring, reports)
    schedule        the config's `schedule:` (cron / preset, assets, both, or null), else $CT_SCHEDULE, else
                    @daily; the batch DAG's from batch.schedule / batch.on_promotion (`<name>.champion`), the
                    monitor's from monitoring.schedule
    timeouts        every task's execution_timeout from the config (`task_timeout_s`, `task_timeouts` per task
                    kind; remote steps at least their backend's own limit): `apply_task_timeouts`

`load_catalog` reads the folder at DAG-parse time, so it only parses YAML (ml.config: pydantic, no MLflow,
no network). A file that does not load, or whose schedule Airflow would refuse, goes to `errors` (file ->
message) instead of the catalog: dags/model_configs.py raises those as the import error that names the
file, while every other model's DAGs load as usual.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import DAG, Asset

    from ml.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]
PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
CURRENT_WINDOW = "current_window"
#: Extra time a remote step's task gets beyond the pod's / job's own limit (start-up, log streaming).
REMOTE_MARGIN_S = 600


def config_dir() -> Path:
    """Where the model configs are: $CT_CONFIG_DIR, else the repository's configs/."""
    return Path(os.environ.get("CT_CONFIG_DIR") or REPO / "configs").resolve()


def window_asset(config: ModelConfig) -> Asset:
    """The model's current window as an Asset (an upstream DAG's outlet, or POST /api/v2/assets/events)."""
    from airflow.sdk import Asset

    current = config.current_path
    if current is None:
        uri = f"x-ct-window://{config.name}"
    elif "://" in current:
        uri = current
    else:
        uri = Path(current).resolve().as_uri()
    return Asset(name=f"{config.name}.{CURRENT_WINDOW}", uri=uri, group="ct-window")


def model_asset(config: ModelConfig) -> Asset:
    """The model's champion as an Asset: promotion and rollback emit its events (extra: version, sha256)."""
    from airflow.sdk import Asset

    return Asset(name=f"{config.name}.champion", uri=f"models:/{config.name}@champion", group="ct-model")


def _check_cron(expression: str) -> str:
    from croniter import croniter

    from ml.errors import ConfigError

    if expression in PRESETS or (not expression.startswith("@") and croniter.is_valid(expression)):
        return expression
    raise ConfigError(f"schedule: {expression!r} is neither a cron expression nor one of {', '.join(PRESETS)}")


def dag_schedule(config: ModelConfig) -> Any:
    """The Airflow `schedule` of the model's retraining DAG (ConfigError for one Airflow would refuse)."""
    from airflow.sdk import Asset, AssetAny, AssetOrTimeSchedule, CronTriggerTimetable

    if not config.schedule_is_set:
        return _check_cron(os.environ.get("CT_SCHEDULE") or "@daily")
    spec = config.schedule
    if spec is None or isinstance(spec, str):
        return spec if spec is None else _check_cron(spec)
    assets = [window_asset(config) if name == CURRENT_WINDOW else Asset(uri=name) for name in spec.assets]
    if spec.cron is None:
        return AssetAny(*assets)
    cron = _check_cron(spec.cron)
    if cron.startswith("@"):
        from ml.errors import ConfigError

        raise ConfigError("schedule.cron: with assets give a cron expression (e.g. '0 6 * * *'), not a preset")
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=AssetAny(*assets))


#: Task name (the task id without its group) -> task kind (ml.config.TASK_KINDS) of the DAGs' tasks.
TASK_KIND = {"validate_data": "validate", "drift": "drift", "drift_report": "drift", "performance": "performance",
             "decide": "decide", "choose_backend": "branch", "choose_target": "branch", "skip": "branch",
             "train_local": "train", "train_kubernetes": "train", "train_databricks": "train", "gates": "gates",
             "register": "register", "approve": "approve", "deploy_local": "deploy", "deploy_kubernetes": "deploy",
             "promote": "promote", "run_record": "record", "rollback": "rollback"}


def batch_schedule(config: ModelConfig) -> Any:
    """The schedule of the model's batch DAG: `batch.schedule` (cron / preset), the `<name>.champion` Asset
    (batch.on_promotion), either of them, or None (manual runs only)."""
    from airflow.sdk import AssetAny, AssetOrTimeSchedule, CronTriggerTimetable

    cron = _check_cron(config.batch.schedule) if config.batch.schedule else None
    if not config.batch.on_promotion:
        return cron
    if cron is None:
        return AssetAny(model_asset(config))
    if cron.startswith("@"):
        from ml.errors import ConfigError

        raise ConfigError("batch.schedule: with batch.on_promotion give a cron expression (e.g. '0 6 * * *'), "
                          "not a preset")
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"),
                               assets=AssetAny(model_asset(config)))


def monitor_schedule(config: ModelConfig) -> str | None:
    """The schedule of the model's monitoring DAG: `monitoring.schedule` (cron / preset, or null)."""
    return _check_cron(config.monitoring.schedule) if config.monitoring.schedule else None


def remote_timeout(config: ModelConfig, step: str) -> timedelta:
    """execution_timeout of a remote step: its kind's timeout, or more where the pod / job may legitimately take
    longer (its own timeout plus start-up), so Airflow never kills a step its backend still allows."""
    own = {"train_kubernetes": config.training.kubernetes.timeout_s + config.training.kubernetes.startup_timeout_s,
           "train_databricks": config.training.databricks.timeout_s,
           "deploy_kubernetes": config.deploy.kubernetes.rollout_timeout_s}[step]
    return timedelta(seconds=max(config.task_timeout_for(TASK_KIND[step]), own + REMOTE_MARGIN_S))


def task_timeout(config: ModelConfig, task_id: str) -> timedelta:
    """execution_timeout of a task of the model's DAGs (README "Timeouts"); an unknown task is an error, so a
    task added to a DAG without a kind fails at parse time instead of running unbounded."""
    name = task_id.rsplit(".", 1)[-1]
    if name not in TASK_KIND:
        raise ValueError(f"task {task_id!r} has no timeout kind: add it to ct_airflow.catalog.TASK_KIND")
    if name in ("train_kubernetes", "train_databricks", "deploy_kubernetes"):
        return remote_timeout(config, name)
    return timedelta(seconds=config.task_timeout_for(TASK_KIND[name]))


def apply_task_timeouts(dag: DAG, config: ModelConfig) -> DAG:
    """Set every task's execution_timeout from the config (the DAG files call it once, after wiring)."""
    for task in dag.tasks:
        task.execution_timeout = task_timeout(config, task.task_id)
    return dag


@dataclass(frozen=True)
class Model:
    """One model config and what its DAGs are made of."""

    config: ModelConfig
    path: Path
    schedule: Any
    #: the batch DAG's schedule (only models with batch.input_path have one) and the monitor DAG's
    batch_schedule: Any = None
    monitor_schedule: Any = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def retrain_dag_id(self) -> str:
        return f"{self.name}.retrain"

    @property
    def rollback_dag_id(self) -> str:
        return f"{self.name}.rollback"

    @property
    def batch_dag_id(self) -> str:
        return f"{self.name}.batch"

    @property
    def monitor_dag_id(self) -> str:
        return f"{self.name}.monitor"

    @property
    def has_batch(self) -> bool:
        """Whether the model has a batch DAG (its config names what to score: batch.input_path)."""
        return self.config.batch.input_path is not None

    @property
    def rollout_dag_id(self) -> str:
        """The shadow/canary check DAG: only models whose deploy.strategy is canary or shadow have one."""
        return f"{self.name}.rollout"

    @property
    def task_timeout(self) -> timedelta:
        return timedelta(seconds=self.config.task_timeout_s)


@dataclass(frozen=True)
class Catalog:
    """The loadable models (sorted by file name) and the files that failed, with the reason."""

    models: list[Model] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


def load_catalog(folder: Path | None = None) -> Catalog:
    """Every `*.yaml` / `*.yml` in `folder` (default config_dir()); a model name used twice is an error of
    the later file (the first keeps its DAGs)."""
    from ml.config import load_config
    from ml.errors import ConfigError

    folder = folder or config_dir()
    if not folder.is_dir():
        return Catalog(errors={str(folder): f"config folder {folder} does not exist (set CT_CONFIG_DIR)"})
    models: list[Model] = []
    errors: dict[str, str] = {}
    seen: dict[str, Path] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            config = load_config(path)
            if config.name in seen:
                raise ConfigError(f"{path}: name '{config.name}' is already the model of {seen[config.name]}; "
                                  "each model config needs a name of its own (it names the model's DAGs)")
            models.append(Model(config=config, path=path, schedule=dag_schedule(config),
                                batch_schedule=batch_schedule(config) if config.batch.input_path else None,
                                monitor_schedule=monitor_schedule(config)))
            seen[config.name] = path
        except (ConfigError, ValueError) as exc:
            message = str(exc)
            errors[str(path)] = message if str(path) in message else f"{path}: {message}"
    return Catalog(models=models, errors=errors)

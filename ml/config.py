"""The model config contract: one YAML file per model, the only thing a user writes to onboard one.

`load_config(path)` reads and validates the file. Unknown keys, missing keys and wrong types are
rejected with a message that names the key (``gates.max_regression: expected a number, got 'x'``).
Relative data paths are resolved against the directory of the config file, so a config and its data
can move together. See README "Configuration" for every key and its default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml.errors import ConfigError

if TYPE_CHECKING:
    from ml.data import ReadLimits

METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "f1", "precision", "recall", "log_loss",
           "average_precision")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Features(_Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


_WINDOW_RE = re.compile(r"^(?P<n>[1-9][0-9]*)(?P<unit>[hd])$")


class DataSources(_Strict):
    reference: str
    current: str | None = None
    #: How far back a prediction-log current window reaches: null = everything logged, "<N>d" / "<N>h" = the
    #: last N days / hours before the run, "since_champion" = since the champion was promoted.
    current_window: str | None = None
    #: URL schemes a window may be read from (e.g. ["s3"]); empty = local paths only (no http://, s3:// ...).
    allowed_schemes: list[str] = Field(default_factory=list)
    #: A window with more rows / bytes is refused before it is read whole.
    max_rows: int = Field(default=2_000_000, ge=1)
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1)

    @field_validator("allowed_schemes")
    @classmethod
    def _schemes(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not re.match(r"^[a-z][a-z0-9+.-]*$", s)]
        if bad:
            raise ValueError(f"expected lower-case URL schemes without '://' (e.g. 's3'), got {bad}")
        return value

    @model_validator(mode="after")
    def _locations(self) -> DataSources:
        from ml.errors import DataError

        for key in ("reference", "current"):
            value = getattr(self, key)
            try:
                self.limits.check_location(value or "", f"data.{key}")
            except DataError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def limits(self) -> ReadLimits:
        """What the window reader accepts (ml.data.ReadLimits)."""
        from ml.data import ReadLimits

        return ReadLimits(max_rows=self.max_rows, max_bytes=self.max_bytes,
                          allowed_schemes=tuple(self.allowed_schemes))

    @field_validator("current_window")
    @classmethod
    def _window_span(cls, value: str | None) -> str | None:
        if value is not None and value != "since_champion" and not _WINDOW_RE.match(value):
            raise ValueError(f"expected null, '<N>d', '<N>h' or 'since_champion', got {value!r}")
        return value

    @property
    def current_window_hours(self) -> int | None:
        """The window's span in hours when it is a fixed span ("7d" -> 168), else None."""
        match = _WINDOW_RE.match(self.current_window or "")
        if match is None:
            return None
        return int(match["n"]) * (24 if match["unit"] == "d" else 1)


class ColumnRule(_Strict):
    min: float | None = None
    max: float | None = None
    max_null_fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    allowed: list[str | int | bool] | None = None


class ContractConfig(_Strict):
    min_rows: int = Field(default=20, ge=1)
    max_null_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    on_unseen_category: Literal["fail", "warn"] = "fail"
    #: Rows of the current window whose category the reference never saw, per column: up to this fraction
    #: they are a warning (counted in the record); above it `on_unseen_category` decides.
    max_unseen_fraction: float = Field(default=0.01, ge=0.0, le=1.0)
    #: Rows that break the contract (a non-numeric or infinite number, a value outside [min, max] or not in
    #: `allowed`) are dropped from the window and counted in the record; above this fraction of a window's
    #: rows the run is blocked instead.
    max_invalid_fraction: float = Field(default=0.01, ge=0.0, le=1.0)
    columns: dict[str, ColumnRule] = Field(default_factory=dict)


class ModelSearch(_Strict):
    """`model.estimator: auto`: the candidate search (ml/search.py, README "How auto chooses")."""

    #: No new candidate starts once this many seconds of cross-validation are spent.
    budget_s: float = Field(default=120.0, gt=0.0)
    cv_folds: int = Field(default=3, ge=2, le=10)
    #: Cross-validation runs on a stratified sample of at most this many training rows.
    max_rows: int = Field(default=10_000, ge=100)
    #: Which registered estimators to try (their search grids); None = every one that has a grid.
    estimators: list[str] | None = Field(default=None, min_length=1)


class ModelSpec(_Strict):
    #: `auto` = the candidate search; or a registered estimator's name (ml/estimators.py)
    estimator: str = "auto"
    params: dict[str, Any] = Field(default_factory=dict)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    search: ModelSearch = Field(default_factory=ModelSearch)

    @model_validator(mode="after")
    def _search_or_named(self) -> ModelSpec:
        if self.estimator == "auto" and self.params:
            raise ValueError("params are only for a named estimator (auto tries its own settings)")
        if self.estimator != "auto" and "search" in self.model_fields_set:
            raise ValueError(f"search applies only to estimator auto (got '{self.estimator}')")
        return self


_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_REF_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


class KubernetesTraining(_Strict):
    """Backend `kubernetes`: a KubernetesPodOperator pod runs `python -m ml train` in the ml image."""

    #: Airflow connection of the cluster (a missing `kubernetes_default` means in-cluster/kubeconfig).
    connection_id: str = "kubernetes_default"
    image: str = "ct-ml:latest"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    namespace: str = "ml"
    service_account: str = "ct-trainer"
    cpu: str = "1"
    memory: str = "2Gi"
    #: Secret whose keys become the pod's environment (MLFLOW_TRACKING_URI, artifact-store credentials).
    mlflow_secret: str = "mlflow-credentials"
    #: This config file as the pod sees it; default /app/configs/<file name> (baked into the image).
    config_path: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    #: Hard limit on the pod's run time (activeDeadlineSeconds).
    timeout_s: int = Field(default=3600, ge=60)
    #: How long the pod may stay Pending (image pull, scheduling) before the task fails.
    startup_timeout_s: int = Field(default=600, ge=10)


class DatabricksTraining(_Strict):
    """Backend `databricks`: a one-off job run (runs/submit) on a new job cluster runs the same
    entrypoint from the project wheel (python_wheel_task)."""

    connection_id: str = "databricks_default"
    spark_version: str = "15.4.x-cpu-ml-scala2.12"
    node_type_id: str = "i3.xlarge"
    #: 0 = a single-node cluster: training is scikit-learn on the driver, workers would sit idle.
    num_workers: int = Field(default=0, ge=0)
    policy_id: str | None = None
    #: The project wheel (`python -m build --wheel`), e.g. /Volumes/<catalog>/<schema>/ct/wheels/...whl
    wheel: str | None = None
    #: Pinned dependencies (docker/requirements-ml.txt uploaded next to the wheel); None = the wheel's own.
    requirements: str | None = None
    package_name: str = "ct-retraining"
    entry_point: str = "ct-ml"
    #: This config file as the job cluster sees it (a /Volumes/... or /Workspace/... path).
    config_path: str | None = None
    #: Environment variable -> Databricks secret "scope/key", passed as {{secrets/scope/key}}.
    env_secrets: dict[str, str] = Field(
        default_factory=lambda: {"MLFLOW_TRACKING_URI": "ct/mlflow-tracking-uri"})
    timeout_s: int = Field(default=7200, ge=60)

    @field_validator("env_secrets")
    @classmethod
    def _secret_refs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            if not _ENV_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if not _SECRET_REF_RE.match(ref):
                raise ValueError(f"{name}: expected a Databricks secret as 'scope/key', got {ref!r}")
        return value


class TrainingConfig(_Strict):
    backend: Literal["local", "kubernetes", "databricks"] = "local"
    #: Which rows to learn from: all = reference + labelled current; current = labelled current only;
    #: auto = all, but on a performance-decay trigger fit both and keep the better on the holdout.
    window: Literal["auto", "all", "current"] = "auto"
    eval_fraction: float = Field(default=0.3, gt=0.0, lt=0.9)
    #: a holdout of fewer rows than this (eval_fraction of the labelled rows) is not held out: every row is
    #: scored by a fit without its fold (`folds`-fold cross-fitting) and the gates judge all of them
    min_holdout_rows: int = Field(default=200, ge=0)
    folds: int = Field(default=5, ge=2, le=20)
    current_weight: float = Field(default=1.0, gt=0.0)
    seed: int = 42
    kubernetes: KubernetesTraining = Field(default_factory=KubernetesTraining)
    databricks: DatabricksTraining = Field(default_factory=DatabricksTraining)


class ColumnDrift(_Strict):
    method: str | None = None
    threshold: float | None = Field(default=None, gt=0.0)


class OutputDriftConfig(_Strict):
    """The served model's output (score) distribution as a drift signal of its own (ml.drift.output): the
    champion's scores on its holdout against its scores on the current window, KS (binary: the positive
    class's probability) or chi-squared (multiclass: the predicted class) at `drift.fdr`, effect size at least
    `drift.min_effect`."""

    enabled: bool = True
    #: whether a shifted output distribution alone may trigger a retrain (rule output_drift); off by default,
    #: so the signal is reported (run record, monitor) without changing any retrain decision
    triggers_retrain: bool = False


class DriftConfig(_Strict):
    #: what the current window is compared with: `config` = data.reference (fixed); `champion` = the
    #: current window the champion was trained with (a sliding reference: "moved since the last retrain?"),
    #: falling back to data.reference while there is none
    reference: Literal["config", "champion"] = "config"
    #: what decides a column: `fdr` = a KS / chi-squared test per column under Benjamini-Hochberg at `fdr`,
    #: plus an effect size of at least `min_effect`; `threshold` = the method's own threshold (Evidently's rule)
    decision: Literal["fdr", "threshold"] = "fdr"
    fdr: float = Field(default=0.05, gt=0.0, lt=1.0)
    #: normed Wasserstein (continuous columns) / Jensen-Shannon distance (the others) a column must reach
    min_effect: float = Field(default=0.05, ge=0.0)
    #: fewer non-missing values than this in either window: the column's drift is "insufficient data"
    min_rows: int = Field(default=30, ge=2)
    #: rows of each window the Evidently HTML report is computed on (a random sample); 0 = no report
    report_rows: int = Field(default=5000, ge=0)
    method: str | None = None
    threshold: float | None = Field(default=None, gt=0.0)
    drift_share: float = Field(default=0.5, gt=0.0, le=1.0)
    columns: dict[str, ColumnDrift] = Field(default_factory=dict)
    output: OutputDriftConfig = Field(default_factory=OutputDriftConfig)


class PerformanceConfig(_Strict):
    metric: Literal[METRICS] = "roc_auc"  # type: ignore[valid-type]
    max_decay: float = Field(default=0.05, ge=0.0)
    min_labelled_rows: int = Field(default=100, ge=1)
    #: estimate the champion's metric without labels (ml.estimate) every run
    estimate: bool = True
    #: labelled rows whose positives differ from the champion's calibrated probabilities by this share of
    #: the rows (significantly) count as decay: P(y|x) moved even where the metric (e.g. ROC AUC) did not
    max_calibration_gap: float = Field(default=0.05, gt=0.0, le=1.0)


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float) -> float:
    """Seconds of a duration written as '90s', '30m', '12h', '7d', '2w' (or a number of seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '12h' or '7d', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise ValueError(f"expected a duration such as '12h' or '7d', got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


class PolicyConfig(_Strict):
    """When a detected change is allowed to become a retrain (ml.decision)."""

    #: after a retrain, drift alone does not trigger another before this much time ('12h', '2d'; none = 0)
    cooldown: str | int | None = None
    #: [k, n]: drift must be seen in k of the last n runs of this model (this one included) to trigger
    k_of_n: list[int] | None = None
    #: at most this many retrain decisions per 7 days (forced and bootstrap runs are not limited)
    max_retrains_per_week: int | None = Field(default=None, ge=1)

    @field_validator("cooldown")
    @classmethod
    def _duration(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("k_of_n")
    @classmethod
    def _k_of_n(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or not 1 <= value[0] <= value[1]):
            raise ValueError(f"expected [k, n] with 1 <= k <= n, got {value}")
        return value

    @property
    def cooldown_s(self) -> float:
        return parse_duration(self.cooldown) if self.cooldown is not None else 0.0


class GatesConfig(_Strict):
    min_metrics: dict[str, float] = Field(default_factory=lambda: {"roc_auc": 0.65})
    max_regression: float = Field(default=0.02, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_rounds: int = Field(default=500, ge=50)
    fairness_min_ratio: float = Field(default=0.8, ge=0.0, le=1.0)
    fairness_min_group_size: int = Field(default=30, ge=1)
    #: fewer than two groups of fairness_min_group_size rows: `pass` (recorded as not evaluated) or `block`
    fairness_unevaluable: Literal["pass", "block"] = "pass"
    parity_tolerance: float = Field(default=1e-4, gt=0.0)
    max_latency_ms: float = Field(default=10.0, gt=0.0)
    max_size_mb: float = Field(default=50.0, gt=0.0)

    @field_validator("min_metrics")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; available: {list(METRICS)}")
        return value


class KubernetesDeploy(_Strict):
    """Target `kubernetes`: a KubernetesPodOperator pod runs the deployer (`python -m ml deploy`), which
    patches the serving Deployment to the new version, waits, smoke-tests and rolls back on failure."""

    connection_id: str = "kubernetes_default"
    namespace: str = "ml"
    deployment: str = "ct-serving"
    service: str = "ct-serving"
    container: str = "serving"
    service_port: int = Field(default=8808, ge=1, le=65535)
    #: Where the smoke test reaches the Service; default http://<service>.<namespace>.svc:<service_port>.
    service_url: str | None = None
    deployer_image: str = "ct-ml:latest"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str = "ct-deployer"
    cpu: str = "250m"
    memory: str = "1Gi"
    rollout_timeout_s: int = Field(default=300, ge=10)
    poll_interval_s: float = Field(default=2.0, gt=0.0, le=60.0)
    mlflow_secret: str = "mlflow-credentials"
    #: This config file as the deployer pod sees it; default /app/configs/<file name>.
    config_path: str | None = None


class CanaryConfig(_Strict):
    """`deploy.strategy: canary` (ml.deploy.canary): the share the canary answers, the test that promotes it,
    and the guardrails that roll it back at once (README "Safe rollout")."""

    fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    #: a feature whose value routes a request (one key always meets one model); null = the prediction id
    key: str | None = None
    #: labelled predictions (feedback) each variant needs before the one look of the test
    min_samples: int = Field(default=200, ge=20)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    #: the canary passes when the lower bound of (canary - champion) on performance.metric is >= -max_regression
    max_regression: float = Field(default=0.0, ge=0.0)
    bootstrap_rounds: int = Field(default=1000, ge=100)
    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_latency_ms: float = Field(default=50.0, gt=0.0)
    #: canary requests before the error-rate and latency guardrails are judged
    min_requests: int = Field(default=50, ge=1)
    #: no verdict within this time (too few labels): roll back
    timeout_h: float = Field(default=168.0, gt=0.0)


class DeployConfig(_Strict):
    target: Literal["local", "kubernetes"] = "local"
    #: replace: the new version takes all traffic once smoke-tested; shadow / canary: README "Safe rollout"
    strategy: Literal["replace", "shadow", "canary"] = "replace"
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    host: str = "127.0.0.1"
    port: int = Field(default=8808, ge=1, le=65535)
    smoke_rows: int = Field(default=5, ge=1, le=100)
    startup_timeout_s: float = Field(default=60.0, gt=0.0)
    kubernetes: KubernetesDeploy = Field(default_factory=KubernetesDeploy)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        if value not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the local target binds to loopback only (127.0.0.1, localhost or ::1)")
        return value


class NotifyConfig(_Strict):
    """Where a run's outcome is sent when it needs a human (README "Outcomes"): an Airflow connection whose
    URI is an HTTP(S) endpoint (its password, if any, goes as a bearer token); none = the task log only."""

    connection_id: str | None = None


class ScheduleSpec(_Strict):
    """`schedule:` as a mapping: a cron expression or preset, Assets whose events start a run, or both
    (a run on either)."""

    cron: str | None = None
    #: `current_window` (this model's current-window Asset) or Asset URIs (an upstream DAG's outlets).
    assets: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> ScheduleSpec:
        if self.cron is None and not self.assets:
            raise ValueError("give a cron expression, assets, or both (null = manual runs only)")
        return self


class PromotionConfig(_Strict):
    """Who moves `champion`: `auto` (the pipeline, once the version serves) or `required` (a person
    approves in Airflow before the version is deployed; no answer within approval_timeout_h = rejected)."""

    approval: Literal["auto", "required"] = "auto"
    approval_timeout_h: float = Field(default=72.0, gt=0.0)

    @property
    def approval_required(self) -> bool:
        return self.approval == "required"


#: The kinds of Airflow task a model's DAGs have (README "Timeouts"): the pipeline steps, the branch tasks
#: (choose_backend, choose_target, skip), the run record and the rollback DAG's task.
TASK_KINDS = ("validate", "drift", "performance", "decide", "branch", "train", "gates", "register", "approve",
              "deploy", "promote", "record", "rollback")
#: Tasks that read and write a little (approve: until it waits for the person; promotion.approval_timeout_h
#: bounds the wait): their default is this, or task_timeout_s if lower.
LIGHT_TASK_KINDS = ("decide", "branch", "register", "approve", "promote", "record")
LIGHT_TASK_TIMEOUT_S = 600


class BatchConfig(_Strict):
    """Batch scoring with the champion (ml.batch; DAG `<name>.batch` when `input_path` is set)."""

    #: the rows to score: a Parquet file, a folder of Parquet files, or a CSV file
    input_path: str | None = None
    #: where the predictions go (a folder; one Parquet file per scoring run); default $CT_HOME/batch/<name>
    output_path: str | None = None
    #: cron / preset of the batch DAG besides promotions; null = only when `champion` moves (on_promotion)
    schedule: str | None = None
    #: score again whenever the `<name>.champion` Asset gets an event (a promotion or a rollback)
    on_promotion: bool = True
    #: rows per chunk read, scored and written at a time: memory is bounded by this, not by the input
    chunk_rows: int = Field(default=65_536, ge=1, le=10_000_000)
    #: an input column copied into the output next to each prediction (e.g. the customer id)
    id_column: str | None = None
    #: log every prediction to the prediction log like online traffic (`source: batch`)
    log_predictions: bool = True
    #: the prediction log to append to; default: data.current when it is one, else the local target's log
    prediction_log: str | None = None
    #: where it runs: `local` (the Airflow worker) or `kubernetes` (a pod, settings of training.kubernetes)
    backend: Literal["local", "kubernetes"] = "local"
    #: backend kubernetes: a PersistentVolumeClaim mounted in the pod at `mount_path` (input, output, log)
    volume_claim: str | None = None
    mount_path: str = "/data"


class MonitoringConfig(_Strict):
    """The monitor of the served model (ml.monitor; DAG `<name>.monitor`): error rate from feedback labels and
    the output distribution, read from the prediction log; a breach triggers `<name>.retrain`."""

    #: cron / preset of the monitoring DAG; null = manual and API runs only
    schedule: str | None = "@hourly"
    #: the prediction log to read; default: data.current when it is one, else the local target's log
    prediction_log: str | None = None
    #: how far back the monitor looks ('<N>h' / '<N>d'); null = everything logged since the champion serves
    window: str | None = "24h"
    #: retrain when the error rate on labelled predictions reaches this many times the champion's holdout error
    error_rate_factor: float = Field(default=1.5, gt=1.0)
    #: labelled predictions needed before the error rate is judged
    min_labelled: int = Field(default=50, ge=1)
    #: also retrain when the output distribution moved (ml.drift.output on the logged traffic)
    on_output_drift: bool = True
    #: the triggered run trains a challenger even if its own checks see no change (the gates still apply)
    force_retrain: bool = True

    @field_validator("window")
    @classmethod
    def _window_span(cls, value: str | None) -> str | None:
        if value is not None and not _WINDOW_RE.match(value):
            raise ValueError(f"expected null, '<N>d' or '<N>h', got {value!r}")
        return value


class ModelConfig(_Strict):
    name: str
    task: Literal["binary", "multiclass"] = "binary"
    target: str
    positive_class: str | int | bool | None = None
    features: Features
    sensitive_feature: str | None = None
    data: DataSources
    contract: ContractConfig = Field(default_factory=ContractConfig)
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    #: The model's DAG schedule: a cron expression or preset, a ScheduleSpec, or null (manual and API runs
    #: only). Not set: $CT_SCHEDULE, else @daily.
    schedule: str | ScheduleSpec | None = None
    #: execution_timeout of every Airflow task of the model (remote steps: at least their own timeout).
    task_timeout_s: int = Field(default=3600, ge=60)
    #: Per task kind (TASK_KINDS) overrides of the execution_timeout, in seconds, e.g. {train: 7200}.
    task_timeouts: dict[str, int] = Field(default_factory=dict)
    #: Where the config was read from (not a YAML key); relative data paths resolve against it.
    source: str | None = Field(default=None, exclude=True)

    @field_validator("task_timeouts")
    @classmethod
    def _known_task_kinds(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(TASK_KINDS))
        if unknown:
            raise ValueError(f"unknown task kind {', '.join(map(repr, unknown))}; kinds: {', '.join(TASK_KINDS)}")
        short = sorted(kind for kind, seconds in value.items() if seconds < 60)
        if short:
            raise ValueError(f"{', '.join(short)}: at least 60 seconds")
        return value

    def task_timeout_for(self, kind: str) -> int:
        """execution_timeout (s) of a task of this kind: task_timeouts[kind], else task_timeout_s (light kinds:
        at most LIGHT_TASK_TIMEOUT_S)."""
        if kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {kind!r}; kinds: {', '.join(TASK_KINDS)}")
        if kind in self.task_timeouts:
            return self.task_timeouts[kind]
        return min(self.task_timeout_s, LIGHT_TASK_TIMEOUT_S) if kind in LIGHT_TASK_KINDS else self.task_timeout_s

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_shape(cls, value: Any) -> Any:
        if value is None or isinstance(value, (str, ScheduleSpec)):
            return value
        if isinstance(value, dict):
            return ScheduleSpec.model_validate(value)
        raise ValueError("expected a cron expression or preset ('@daily'), a mapping {cron, assets}, or null")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must start with a letter or digit and use only letters, digits, '_', '.', '-'"
                             " (max 100 characters): it names the MLflow model and folders")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        feats = self.features.all
        if not feats:
            raise ValueError("features: list at least one numeric or categorical feature")
        dupes = sorted({f for f in feats if feats.count(f) > 1})
        if dupes:
            raise ValueError(f"features: {dupes} listed more than once")
        if self.target in feats:
            raise ValueError(f"target: '{self.target}' is also listed as a feature")
        if self.task == "binary" and self.positive_class is None:
            raise ValueError("positive_class: required when task is binary")
        if self.sensitive_feature == self.target:
            raise ValueError("sensitive_feature: must not be the target")
        if self.deploy.canary.key is not None and self.deploy.canary.key not in feats:
            raise ValueError(f"deploy.canary.key: '{self.deploy.canary.key}' is not a feature (the server routes "
                             "by a field of the request)")
        known = {*feats, self.target}
        if self.sensitive_feature:
            known.add(self.sensitive_feature)
        sections = (("contract.columns", self.contract.columns), ("drift.columns", self.drift.columns))
        for section, cols in sections:
            stray = sorted(set(cols) - known)
            if stray:
                raise ValueError(f"{section}: {stray} are not features, the target or the sensitive feature")
        return self

    @property
    def schedule_is_set(self) -> bool:
        """Whether the file says `schedule:` (null included), rather than leaving the default to the DAG."""
        return "schedule" in self.model_fields_set

    @property
    def feature_columns(self) -> list[str]:
        return self.features.all

    @property
    def required_columns(self) -> list[str]:
        """Columns every window must carry (the target is optional in the current window)."""
        cols = list(self.features.all)
        if self.sensitive_feature and self.sensitive_feature not in cols:
            cols.append(self.sensitive_feature)
        return cols

    def resolve(self, path: str | None) -> str | None:
        """Resolve a data path: URIs pass through, relative paths are relative to the config file."""
        if path is None or "://" in path or Path(path).is_absolute() or self.source is None:
            return path
        return str((Path(self.source).parent / path).resolve())

    def with_data(self, reference: str | None = None, current: str | None = None) -> ModelConfig:
        """A copy whose data paths are overridden (CLI flags, DAG params); None keeps the config's.

        Overrides are paths as the caller typed them, so they resolve against the working directory. A URL
        passes through; the reader refuses it unless `data.allowed_schemes` lists its scheme (so a DAG run
        given one is recorded as blocked, naming it).
        """
        update = {key: value if "://" in value else str(Path(value).resolve())
                  for key, value in (("reference", reference), ("current", current)) if value}
        return self.model_copy(update={"data": self.data.model_copy(update=update)})

    @property
    def reference_path(self) -> str:
        return self.resolve(self.data.reference)  # type: ignore[return-value]

    @property
    def current_path(self) -> str | None:
        return self.resolve(self.data.current)


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if not loc:  # cross-field checks already start their message with the key
        return error["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (check the spelling; see README 'Configuration')"
    if kind == "missing":
        return f"{loc}: missing required key"
    msg = error["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind in ("literal_error",):
        return f"{loc}: {msg} (got {error.get('input')!r})"
    return f"{loc}: {msg}"


def parse_config(raw: Any, source: str = "<config>") -> ModelConfig:
    """Validate an already-parsed YAML document against the contract."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    try:
        return ModelConfig.model_validate({**raw, "source": source})
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"invalid config {source}: " + "; ".join(problems)) from None


def config_sha256(path: str | Path) -> str:
    """sha256 of a config file's bytes: what a step started elsewhere checks it runs on (CT_CONFIG_SHA256)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_config(path: str | Path) -> ModelConfig:
    """Read and validate a model config YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found (pass --config or the DAG param 'config')")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    return parse_config(raw, source=str(p.resolve()))

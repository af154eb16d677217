"""The monitor of the served model: is its live traffic still what it was validated on?

`check_serving(config)` reads the prediction log of the served model (online and batch predictions, with the
labels that came back through /feedback), keeps the champion's own predictions of the last
`monitoring.window`, and judges two signals:

    error rate     labelled predictions whose predicted label is not the label that came back, against the
                   champion's error on its holdout (the baseline, at the model's threshold); breached when the
                   rate reaches `monitoring.error_rate_factor` (1.5) x the baseline, once
                   `monitoring.min_labelled` labelled predictions exist. The baseline is floored at one
                   holdout error (1 / holdout rows), so a perfect holdout does not make every error a breach.
    output drift   the champion's scores on the logged traffic against its holdout scores (ml.drift.output);
                   a trigger when `monitoring.on_output_drift`

`MonitorReport.retrain` says whether a retraining run is due; the DAG `<name>.monitor` then triggers
`<name>.retrain` on the prediction log. The serving process's own health (HTTP 5xx rate, p99 latency,
prediction-log drops) is Prometheus's job: deploy/k8s/prometheus-rules.yaml alerts on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ml.drift.output import OutputDrift
from ml.result import Result

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorRate(Result):
    """The served model's error rate on labelled predictions against its holdout baseline."""

    labelled: int
    errors: int
    rate: float | None
    baseline: float | None
    factor: float
    #: factor x baseline (the baseline floored at one holdout error)
    threshold: float | None
    #: None: not judged (no baseline, or fewer than min_labelled labelled predictions)
    breached: bool | None
    detail: str = ""


def judge_error_rate(predicted: list[str], actual: list[str], baseline_errors: int, baseline_rows: int, *,
                     factor: float, min_labelled: int) -> ErrorRate:
    """The error rate of `predicted` vs `actual` labels (both canonical strings, labelled rows only). Pure."""
    labelled = len(actual)
    errors = sum(p != a for p, a in zip(predicted, actual, strict=True))
    rate = errors / labelled if labelled else None
    if not baseline_rows:
        return ErrorRate(labelled, errors, rate, None, factor, None, None, "no holdout baseline")
    baseline = baseline_errors / baseline_rows
    threshold = factor * max(baseline, 1 / baseline_rows)
    if labelled < min_labelled:
        return ErrorRate(labelled, errors, rate, baseline, factor, threshold, None,
                         f"{labelled} labelled prediction(s) < monitoring.min_labelled {min_labelled}")
    breached = rate >= threshold * (1 - 1e-9)  # type: ignore[operator]  # "reaches": 0.3 reaches 1.5 x 0.2
    detail = (f"error rate {rate:.3f} on {labelled} labelled predictions "
              f"{'>=' if breached else '<'} {factor:g} x holdout baseline {baseline:.3f} (= {threshold:.3f})")
    return ErrorRate(labelled, errors, rate, baseline, factor, threshold, breached, detail)


@dataclass(frozen=True)
class MonitorReport(Result):
    """One look at the served model's traffic, and whether it calls for retraining."""

    summary_fields = ("model", "champion_version", "predictions", "retrain", "reasons", "prediction_log")

    model: str
    checked_at: str
    champion_version: str | None
    prediction_log: str
    #: the oldest prediction time looked at (None: everything logged)
    since: str | None
    predictions: int
    error_rate: ErrorRate | None = None
    output: OutputDrift | None = None
    retrain: bool = False
    reasons: list[str] = field(default_factory=list)

    def retrain_conf(self, force_retrain: bool) -> dict[str, object]:
        """The params of the `<name>.retrain` run this report triggers (the prediction log as current window)."""
        return {"current_path": self.prediction_log, "force_retrain": force_retrain, "reference_path": None,
                "training_backend": None}


def _since(config: ModelConfig, as_of: datetime, promoted_at: str | None) -> datetime | None:
    from ml.predlog import window_since

    return window_since(config.monitoring.window or "since_champion", as_of=as_of, champion_promoted_at=promoted_at)


def _champion_traffic(config: ModelConfig, root: str, version: str, since: datetime | None,
                      until: datetime) -> pd.DataFrame:
    """The champion's logged predictions in the window, with the labels that came back (config.target)."""
    from ml.predlog import is_prediction_log, read_prediction_log

    if not is_prediction_log(root):
        import pandas as pd

        log.info("monitor: no prediction log at %s yet", root)
        return pd.DataFrame(columns=[*config.feature_columns, "prediction", config.target])
    frame = read_prediction_log(root, label_column=config.target, since=since, until=until)
    return frame[frame["model_version"].astype(str) == version].reset_index(drop=True)


def check_serving(config: ModelConfig, prediction_log: str | None = None, as_of: datetime | None = None
                  ) -> MonitorReport:
    """The served champion's error rate and output drift on its logged traffic (module docstring)."""
    from ml.data import label_key
    from ml.deploy.local import served_log
    from ml.drift.output import champion_output_drift, describe
    from ml.export import OnnxModel, predicted_labels
    from ml.registry import CHAMPION, fetch_onnx, version_by_alias
    from ml.tracking import ct_home, mlflow_client
    from ml.train import Holdout

    mc = config.monitoring
    until = as_of or datetime.now(UTC)
    root = str(served_log(config, prediction_log or mc.prediction_log))
    client = mlflow_client()
    champion = version_by_alias(client, config.name, CHAMPION)
    base = {"model": config.name, "checked_at": until.isoformat(timespec="seconds"), "prediction_log": root}
    if champion is None:
        return MonitorReport(**base, champion_version=None, since=None, predictions=0, reasons=["no champion yet"])
    version = str(champion.version)
    since = _since(config, until, (champion.tags or {}).get("ct.champion.at"))
    traffic = _champion_traffic(config, root, version, since, until)
    path, sha = fetch_onnx(client, config.name, version, ct_home() / "cache" / config.name / f"v{version}")
    model = OnnxModel.load(path, expected_sha256=sha)
    holdout = Holdout.of_run(champion.run_id)
    classes = [str(c) for c in model.classes]
    holdout_labels = predicted_labels(holdout.sklearn_proba, classes, model.threshold)
    baseline_errors = int(sum(holdout_labels[i] != classes[int(y)] for i, y in enumerate(holdout.y)))
    labelled = traffic[traffic[config.target].notna()]
    error = judge_error_rate([label_key(v) for v in labelled["prediction"]],
                             [label_key(v) for v in labelled[config.target]], baseline_errors, len(holdout.y),
                             factor=mc.error_rate_factor, min_labelled=mc.min_labelled)
    output = champion_output_drift(config, model, version, champion.run_id, traffic)
    reasons = [error.detail] if error.breached else []
    if mc.on_output_drift and output is not None and output.drifted:
        reasons.append(describe(output))
    report = MonitorReport(**base, champion_version=version, since=since.isoformat() if since else None,
                           predictions=len(traffic), error_rate=error, output=output, retrain=bool(reasons),
                           reasons=reasons or [error.detail or "healthy"])
    log.info("monitor %s v%s: %d prediction(s); %s", config.name, version, len(traffic),
             "; ".join(report.reasons))
    return report

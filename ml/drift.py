"""Drift detection: Evidently's DataDriftPreset on the model features, reference vs current.

Evidently picks a statistic per column (KS / chi-squared below 1000 rows, normed Wasserstein /
Jensen-Shannon above); `drift.method`, `drift.threshold` and `drift.columns.<col>` override it with
any of Evidently's registered stattests (`available_methods()`). The result is per column
(method, score, threshold, drifted), the drifted share, the dataset-level verdict and the HTML report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.data import model_frame
from ml.errors import ConfigError
from ml.result import Result

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureDrift(Result):
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult(Result):
    """The drift step's result. `skipped` (with no features) when there was no current window to compare."""

    summary_fields = ("dataset_drift", "drifted_share", "drift_share_threshold", "report_path", "skipped")

    dataset_drift: bool
    drifted_share: float
    drift_share_threshold: float
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    report_path: str | None = None
    #: what the current window was compared with (drift.reference), in words
    compared_with: str | None = None
    skipped: str | None = None

    @classmethod
    def not_run(cls, reason: str, drift_share_threshold: float) -> DriftResult:
        return cls(dataset_drift=False, drifted_share=0.0, drift_share_threshold=drift_share_threshold,
                   skipped=reason)

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]


def available_methods() -> list[str]:
    """Names of the drift statistics Evidently has registered (built-in and user-registered)."""
    from evidently.legacy.calculations.stattests import registry

    return sorted(registry._registered_stat_tests)


def _check_methods(config: ModelConfig) -> None:
    wanted = {config.drift.method} | {c.method for c in config.drift.columns.values()}
    wanted.discard(None)
    if not wanted:
        return
    known = available_methods()
    unknown = sorted(m for m in wanted if m not in known)
    if unknown:
        raise ConfigError(f"drift method(s) {unknown} unknown; available: {', '.join(known)}")


def detect_drift(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame,
                 report_dir: Path | None = None) -> DriftResult:
    """Compare the feature distributions of two windows; write the HTML report into report_dir."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    _check_methods(config)
    dc = config.drift
    definition = DataDefinition(numerical_columns=list(config.features.numeric),
                                categorical_columns=list(config.features.categorical))
    preset = DataDriftPreset(
        columns=config.feature_columns,
        drift_share=dc.drift_share,
        method=dc.method,
        threshold=dc.threshold,
        per_column_method={c: v.method for c, v in dc.columns.items() if v.method} or None,
        per_column_threshold={c: v.threshold for c, v in dc.columns.items() if v.threshold} or None,
    )
    log.info("drift: %d reference rows vs %d current rows, %d features",
             len(reference), len(current), len(config.feature_columns))
    snapshot = Report([preset], include_tests=True).run(
        Dataset.from_pandas(model_frame(current, config), data_definition=definition),
        Dataset.from_pandas(model_frame(reference, config), data_definition=definition),
    )
    features = _parse(snapshot.dict())
    missing = [c for c in config.feature_columns if c not in features]
    if missing:
        raise RuntimeError(f"Evidently returned no drift result for {missing}")
    features = {c: features[c] for c in config.feature_columns}
    drifted = sum(f.drifted for f in features.values())
    share = drifted / len(features)
    report_path = None
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        report_path = str(report_dir / "drift_report.html")
        snapshot.save_html(report_path)
    return DriftResult(dataset_drift=share >= dc.drift_share, drifted_share=share,
                       drift_share_threshold=dc.drift_share, features=features, report_path=report_path)


def _parse(snapshot: dict[str, Any]) -> dict[str, FeatureDrift]:
    """Per-column results: the ValueDrift metric gives method/score/threshold, its test the verdict."""
    metrics = {m["id"]: m for m in snapshot["metrics"] if m["config"].get("type", "").endswith(":ValueDrift")}
    verdicts = {t["metric_config"]["metric_id"]: t["status"] for t in snapshot.get("tests", [])
                if t["metric_config"]["metric_id"] in metrics}
    out: dict[str, FeatureDrift] = {}
    for metric_id, metric in metrics.items():
        cfg = metric["config"]
        out[cfg["column"]] = FeatureDrift(method=cfg["method"], score=float(metric["value"]),
                                          threshold=float(cfg["threshold"]),
                                          drifted=verdicts.get(metric_id) == "FAIL")
    return out

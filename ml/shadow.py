"""Champion and challenger compared on live traffic, from the prediction log (`python -m ml shadow-report`).

A server with a shadow model (ml.serving.variants) logs, on each prediction line, the champion's answer
(`output`) and the shadow's answer to the same request (`shadow`). `shadow_report` compares them:

* **agreement**: the share of requests where both predicted the same label;
* **score distributions**: the champion's and the shadow's scores (binary: the positive class's probability;
  multiclass: the top probability) as two samples, with the drift statistics of ml.drift (two-sample KS
  p-value and normed Wasserstein distance) and the mean absolute score difference per request;
* **the metric**, once labels came back through /feedback: `performance.metric` of both on the same labelled
  requests, and a paired bootstrap interval of (shadow - champion) (ml.gates.paired_bootstrap).

`variant_arms` reads the same log for a canary: each variant's labelled predictions (ml.abtest.Arm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.errors import DataError
from ml.result import Result

if TYPE_CHECKING:
    import numpy as np

    from ml.abtest import Arm
    from ml.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowReport(Result):
    summary_fields = ("shadow_version", "rows", "agreement", "labelled", "metric", "difference")

    model: str
    champion_versions: list[str]
    shadow_version: str | None
    rows: int
    agreement: float | None
    score_ks_p_value: float | None
    score_wasserstein: float | None
    mean_abs_score_difference: float | None
    champion_mean_score: float | None
    shadow_mean_score: float | None
    labelled: int
    metric: str
    champion_metric: float | None = None
    shadow_metric: float | None = None
    difference: float | None = None
    interval: list[float] | None = None
    log: str = ""


def load_log(root: str | Path, since: str | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(prediction lines oldest first, prediction id -> latest feedback label) of a prediction log."""
    from ml.predlog import read_feedback, read_prediction_records

    records = sorted(read_prediction_records(root), key=lambda r: r.get("timestamp") or "")
    if since is not None:
        records = [r for r in records if (r.get("timestamp") or "") >= since]
    feedback = read_feedback(root)
    labels = dict(zip(feedback["prediction_id"], feedback["label"].astype(str), strict=True))
    return records, labels


def _classes(records: list[dict[str, Any]]) -> list[str]:
    for record in records:
        probabilities = (record.get("output") or {}).get("probabilities")
        if probabilities:
            return list(probabilities)
    raise DataError("the prediction log has no predictions with probabilities")


def _arrays(answers: list[dict[str, Any]], classes: list[str]) -> np.ndarray:
    import numpy as np

    return np.array([[float(a["probabilities"][c]) for c in classes] for a in answers], dtype=np.float64).reshape(
        len(answers), len(classes))


def _scores(proba: np.ndarray, positive: int | None) -> np.ndarray:
    return proba[:, positive] if positive is not None else proba.max(axis=1)


def _positive_index(config: ModelConfig, classes: list[str]) -> int | None:
    from ml.data import label_key

    if config.task != "binary" or len(classes) != 2:
        return None
    key = label_key(config.positive_class)
    return classes.index(key) if key in classes else 1


def _distances(champion: np.ndarray, shadow: np.ndarray) -> tuple[float | None, float | None]:
    from ml.drift.profile import numeric_profile
    from ml.drift.statistics import get_statistic

    if len(champion) < 2:
        return None, None
    a, b = numeric_profile(champion), numeric_profile(shadow)
    return get_statistic("ks").compute(a, b), get_statistic("wasserstein").compute(a, b)


def shadow_report(config: ModelConfig, records: list[dict[str, Any]], labels: dict[str, str],
                  rounds: int = 1000, confidence: float = 0.95, log_path: str = "") -> ShadowReport:
    """The comparison of the lines that carry a shadow answer (of the newest shadow version seen)."""
    import numpy as np

    from ml.gates import paired_bootstrap
    from ml.metrics import score

    paired = [r for r in records if r.get("shadow")]
    shadow_version = paired[-1]["shadow"]["model_version"] if paired else None
    paired = [r for r in paired if r["shadow"]["model_version"] == shadow_version]
    metric = config.performance.metric
    empty = ShadowReport(config.name, [], shadow_version, 0, None, None, None, None, None, None, 0, metric,
                         log=log_path)
    if not paired:
        return empty
    classes = _classes(paired)
    champion = _arrays([r["output"] for r in paired], classes)
    shadow = _arrays([r["shadow"] for r in paired], classes)
    positive = _positive_index(config, classes)
    a, b = _scores(champion, positive), _scores(shadow, positive)
    ks_p, wasserstein = _distances(a, b)
    agreement = float(np.mean([r["output"]["label"] == r["shadow"]["label"] for r in paired]))
    report = ShadowReport(config.name, sorted({str(r["model_version"]) for r in paired}), shadow_version, len(paired),
                          agreement, ks_p, wasserstein, float(np.mean(np.abs(a - b))), float(a.mean()),
                          float(b.mean()), 0, metric, log=log_path)
    rows = [i for i, r in enumerate(paired) if labels.get(r["prediction_id"]) in classes]
    if len(rows) < 2:
        return report if not rows else _with_labels(report, len(rows))
    y = np.array([classes.index(labels[paired[i]["prediction_id"]]) for i in rows])
    threshold = config.model.threshold
    point, lo, hi = paired_bootstrap(metric, y, shadow[rows], champion[rows], rounds, confidence, 0, threshold)
    return _with_labels(report, len(rows), score(metric, y, champion[rows], threshold),
                        score(metric, y, shadow[rows], threshold), point, [lo, hi])


def _with_labels(report: ShadowReport, labelled: int, champion: float | None = None, shadow: float | None = None,
                 difference: float | None = None, interval: list[float] | None = None) -> ShadowReport:
    from dataclasses import replace

    return replace(report, labelled=labelled, champion_metric=champion, shadow_metric=shadow, difference=difference,
                   interval=interval)


def variant_arms(records: list[dict[str, Any]], labels: dict[str, str], canary_version: str) -> tuple[Arm, Arm]:
    """(champion, canary): the labelled predictions each variant answered, oldest first."""
    import numpy as np

    from ml.abtest import Arm

    classes = _classes(records) if records else ["0", "1"]
    arms = []
    for variant in ("champion", "canary"):
        rows = [r for r in records if r.get("variant") == variant and labels.get(r["prediction_id"]) in classes]
        if variant == "canary":
            rows = [r for r in rows if str(r["model_version"]) == canary_version]
        y = np.array([classes.index(labels[r["prediction_id"]]) for r in rows], dtype=np.int64)
        version = canary_version if variant == "canary" else (str(rows[0]["model_version"]) if rows else None)
        arms.append(Arm(version, y, _arrays([r["output"] for r in rows], classes)))
    return arms[0], arms[1]


def compare_shadow(config: ModelConfig, log_path: str | None = None, since: str | None = None) -> ShadowReport:
    """The shadow report of a prediction log (default: the local target's, $CT_HOME/serving/<model>)."""
    from ml.deploy.local import serving_dir

    root = Path(log_path) if log_path else serving_dir(config.name) / "predictions"
    records, labels = load_log(root, since)
    report = shadow_report(config, records, labels, rounds=config.gates.bootstrap_rounds,
                           confidence=config.gates.confidence, log_path=str(root))
    log.info("shadow report of %s: %s", root, report.summary())
    return report

"""The Evidently HTML report of a drift run, computed on a bounded random sample of each window.

Evidently's DataDriftPreset takes about a minute on 1M x 9 rows; the run's decision does not need it
(ml.drift computes the statistics on all rows). The report is Evidently's, on at most `drift.report_rows`
rows of each window, with the same per-column methods and thresholds; a banner at its top says so and
gives the run's own verdict, so nobody mistakes the sample's numbers for the decision's.

It is a step of its own beside the decision path (`drift_report`, ml.steps.check.drift_report): importing
Evidently alone takes longer (about 3.5 s) than every step of the decision on a small window, and nothing
decided waits for it. It renders from the two windows' stored profiles (their row samples), so it reads no
window again.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.result import Result

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig
    from ml.drift import DriftResult
    from ml.drift.profile import ReferenceProfile
    from ml.drift.report_worker import ReportWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftReport(Result):
    """The drift_report step's result: where the HTML report is, on how many rows of each window Evidently ran
    (`*_sample` of `*_rows`), and the columns Evidently flagged on those samples; `skipped` says why there is
    no report (drift not measured, `drift.report_rows: 0`)."""

    summary_fields = ("report_path", "evidently_drifted", "skipped")

    report_path: str | None
    reference_sample: int = 0
    reference_rows: int = 0
    current_sample: int = 0
    current_rows: int = 0
    evidently_drifted: list[str] = field(default_factory=list)
    skipped: str | None = None


def render_report(config: ModelConfig, result: DriftResult, reference: ReferenceProfile, current: ReferenceProfile,
                  path: Path, worker: ReportWorker | None = None) -> DriftReport:
    """Evidently's report of `result` on the profiles' row samples (at most drift.report_rows each), at `path`."""
    rows, seed = config.drift.report_rows, config.training.seed
    ref_sample, cur_sample = sample(reference.sample, rows, seed), sample(current.sample, rows, seed)
    flagged = write_report(config, ref_sample, cur_sample, result, path, reference_rows=reference.rows,
                           current_rows=current.rows, worker=worker)
    return DriftReport(report_path=str(path), reference_sample=len(ref_sample), reference_rows=reference.rows,
                       current_sample=len(cur_sample), current_rows=current.rows, evidently_drifted=flagged)


def sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    return frame.sample(n=rows, random_state=seed) if len(frame) > rows else frame


def report_job(config: ModelConfig, path: Path) -> dict[str, Any]:
    """What Evidently needs to render the report: the columns, the preset's settings, the file (JSON-ready)."""
    dc = config.drift
    return {"numeric": list(config.features.numeric), "categorical": list(config.features.categorical),
            "preset": {"columns": config.feature_columns, "drift_share": dc.drift_share, "method": dc.method,
                       "threshold": dc.threshold,
                       "per_column_method": {c: v.method for c, v in dc.columns.items() if v.method} or None,
                       "per_column_threshold": {c: v.threshold for c, v in dc.columns.items() if v.threshold}
                       or None},
            "out": str(path)}


def render(job: dict[str, Any], reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Evidently's DataDriftPreset on the two frames, saved as HTML at job["out"]; its per-column results."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=job["numeric"], categorical_columns=job["categorical"])
    snapshot = Report([DataDriftPreset(**job["preset"])], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition))
    Path(job["out"]).parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(job["out"])
    return _parse(snapshot.dict())


def write_report(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame, result: DriftResult,
                 path: Path, *, reference_rows: int, current_rows: int,
                 worker: ReportWorker | None = None) -> list[str]:
    """Evidently's report on samples of canonical model frames, with a banner naming what decided; rendered
    by `worker` (Evidently imported beside the step, ml.drift.report_worker) when given, else here. Returns
    the columns Evidently flagged on the samples."""
    job = report_job(config, path)
    sampled = worker.render(job, reference, current) if worker is not None else None
    if sampled is None:
        sampled = render(job, reference, current)
    evidently_drifted = sorted(c for c, f in sampled.items() if f["drifted"])
    banner = _banner(result, len(reference), reference_rows, len(current), current_rows, evidently_drifted)
    text = path.read_text(encoding="utf-8")
    at = text.find(">", text.find("<body")) + 1 if "<body" in text else 0
    path.write_text(text[:at] + banner + text[at:], encoding="utf-8")
    return evidently_drifted


def _banner(result: DriftResult, ref_sample: int, ref_rows: int, cur_sample: int, cur_rows: int,
            evidently_drifted: list[str]) -> str:
    decided = (f"Benjamini-Hochberg over per-column KS / chi-squared tests at FDR {result.fdr:g}, effect size "
               f">= {result.min_effect:g}" if result.decision == "fdr" else "each column's method and threshold")
    verdict = ("insufficient data" if result.dataset_drift is None else
               f"{'drift' if result.dataset_drift else 'no drift'}: {len(result.drifted_features)} of "
               f"{result.evaluated} columns drifted ({', '.join(result.drifted_features) or 'none'})")
    lines = [
        f"This report is Evidently's, computed on a random sample: {ref_sample:,} of {ref_rows:,} reference rows "
        f"and {cur_sample:,} of {cur_rows:,} current rows. Its numbers are the sample's.",
        f"The run's decision used every row ({decided}): {verdict}. Evidently on this sample flags: "
        f"{', '.join(evidently_drifted) or 'none'}. The run record's drift section has each column's test.",
    ]
    body = "".join(f"<p style='margin:4px 0'>{html.escape(line)}</p>" for line in lines)
    return ("<div id='ct-drift-banner' style='font:14px sans-serif;background:#fff4ce;border:1px solid #e0b400;"
            f"padding:8px 12px;margin:8px'>{body}</div>")


def _parse(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-column results of an Evidently snapshot: its ValueDrift metrics give method, score and
    threshold, their tests the verdict."""
    metrics = {m["id"]: m for m in snapshot["metrics"] if m["config"].get("type", "").endswith(":ValueDrift")}
    verdicts = {t["metric_config"]["metric_id"]: t["status"] for t in snapshot.get("tests", [])
                if t["metric_config"]["metric_id"] in metrics}
    return {metric["config"]["column"]: {"method": metric["config"]["method"], "score": float(metric["value"]),
                                         "threshold": float(metric["config"]["threshold"]),
                                         "drifted": verdicts.get(metric_id) == "FAIL"}
            for metric_id, metric in metrics.items()}

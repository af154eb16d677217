"""Drift on outputs: has the served model's score distribution moved away from the one it was validated on?

The reference is the champion's scores on its own holdout (the rows the gates judged it on, stored with its
training run); the current side is its scores on the current window (the served traffic, or any window the
run checks). The signal is one column, judged with the statistics the feature drift uses
(ml.drift.significance on ml.drift.profile column profiles):

    binary      the positive class's probability: KS test, effect = Wasserstein distance normed by the
                reference's std
    multiclass  the predicted class: chi-squared test of homogeneity, effect = Jensen-Shannon distance

drifted = p <= alpha (drift.fdr) and effect >= min_effect (drift.min_effect); fewer than `min_rows` scores in
either window is "insufficient_data" (drifted None). A shift of the outputs can show what feature drift
misses (many small moves that add up in the model) and the reverse; `drift.output.triggers_retrain` decides
whether it may trigger a retrain (off by default: reported only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ml.result import Result

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ml.config import ModelConfig
    from ml.drift.profile import ColumnProfile
    from ml.export import OnnxModel

log = logging.getLogger(__name__)

#: A column's (or the outputs') verdict.
Status = Literal["drifted", "stable", "insufficient_data"]


@dataclass(frozen=True)
class OutputDrift(Result):
    """The output-distribution drift of one model version."""

    summary_fields = ("signal", "drifted", "status", "p_value", "effect", "champion_version")

    #: what is compared: "score:<positive class>" (binary) or "label" (multiclass)
    signal: str
    drifted: bool | None
    status: Status
    reference_rows: int
    current_rows: int
    champion_version: str | None = None
    test: str | None = None
    p_value: float | None = None
    effect_method: str | None = None
    effect: float | None = None
    alpha: float = 0.05
    min_effect: float = 0.0
    #: mean score (binary) on each side, for the record and the dashboard
    reference_mean: float | None = None
    current_mean: float | None = None
    detail: str = ""


def signal_profile(proba: np.ndarray, classes: list[str], positive_index: int | None) -> tuple[str, ColumnProfile]:
    """(signal name, profile) of a model's outputs: the positive class's probability, or the predicted class."""
    import numpy as np
    import pandas as pd

    from ml.drift.profile import categorical_profile, numeric_profile

    if positive_index is not None:
        return f"score:{classes[positive_index]}", numeric_profile(np.asarray(proba[:, positive_index], float))
    labels = np.asarray(classes, dtype=object)[np.argmax(proba, axis=1)]
    return "label", categorical_profile(pd.Series(labels, dtype=object))


def compare_outputs(reference_proba: np.ndarray, current_proba: np.ndarray, classes: list[str],
                    positive_index: int | None, *, alpha: float, min_effect: float, min_rows: int,
                    champion_version: str | None = None) -> OutputDrift:
    """Output drift of `current_proba` against `reference_proba` (rows x classes). Pure."""
    from ml.drift.significance import column_test, effect_size

    signal, reference = signal_profile(reference_proba, classes, positive_index)
    _, current = signal_profile(current_proba, classes, positive_index)
    means = {}
    if positive_index is not None:
        means = {"reference_mean": float(reference_proba[:, positive_index].mean()) if reference.n else None,
                 "current_mean": float(current_proba[:, positive_index].mean()) if current.n else None}
    base = {"signal": signal, "reference_rows": reference.n, "current_rows": current.n,
            "champion_version": champion_version, "alpha": alpha, "min_effect": min_effect, **means}
    if min(reference.n, current.n) < min_rows:
        return OutputDrift(drifted=None, status="insufficient_data", **base,
                           detail=f"{current.n} current / {reference.n} reference scores (drift.min_rows {min_rows})")
    test, p_value = column_test(reference, current)
    effect_method, effect = effect_size(reference, current)
    drifted = p_value <= alpha and effect >= min_effect
    detail = "" if drifted or p_value > alpha else f"significant, but effect {effect:.3g} < min_effect"
    return OutputDrift(drifted=drifted, status="drifted" if drifted else "stable", test=test, p_value=p_value,
                       effect_method=effect_method, effect=effect, detail=detail, **base)


def describe(result: OutputDrift) -> str:
    """One line for reasons and notes."""
    if result.drifted is None:
        return f"output drift not judged ({result.detail})"
    word = "moved" if result.drifted else "stable"
    return (f"outputs {word} ({result.signal}: {result.test} p={result.p_value:.3g}, {result.effect_method} "
            f"{result.effect:.3g}, {result.current_rows} vs {result.reference_rows} holdout scores)")


def positive_index(config: ModelConfig, classes: list[str]) -> int | None:
    """Index of the positive class among the model's classes (binary), None for multiclass."""
    from ml.data import label_key

    if config.task != "binary":
        return None
    return [label_key(c) for c in classes].index(label_key(config.positive_class))


def champion_output_drift(config: ModelConfig, model: OnnxModel, version: str | None, run_id: str | None,
                          current: pd.DataFrame) -> OutputDrift | None:
    """The champion's output drift on `current` (raw rows) against the holdout of its training run `run_id`;
    None when there is nothing to compare (no champion, no stored holdout, or drift.output.enabled false)."""
    from ml.data import model_frame
    from ml.train import Holdout

    if not config.drift.output.enabled or model is None or not run_id:
        return None
    try:
        holdout = Holdout.of_run(run_id)
    except Exception as exc:  # registered by hand, or before holdouts were kept
        log.info("output drift: champion v%s has no stored holdout (%s)", version, type(exc).__name__)
        return None
    classes = [str(c) for c in model.classes]
    current_proba = model.predict_proba(model_frame(current, config)) if len(current) else holdout.sklearn_proba[:0]
    dc = config.drift
    return compare_outputs(holdout.sklearn_proba, current_proba, classes, positive_index(config, classes),
                           alpha=dc.fdr, min_effect=dc.min_effect, min_rows=dc.min_rows, champion_version=version)

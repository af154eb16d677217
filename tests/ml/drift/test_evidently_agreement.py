"""The drift statistics are Evidently's: on a suite of shifts (none, small, large, scale, categorical, mixed),
with `drift.decision: threshold` (each column by its method's threshold, Evidently's rule) our per-column
methods and decisions are identical to Evidently DataDriftPreset's and the scores agree within 1e-6
(relative), at reference sizes on both sides of Evidently's 1,000-row switch (p-value tests below it,
distances above)."""

from __future__ import annotations

import pytest

from ml.drift import detect_drift
from ml.drift.report import _parse
from ml.drift.statistics import get_statistic
from tests.ml.drift.shifts import CATEGORICAL, NUMERIC, SHIFTS, config, window


def evidently(reference, current, cfg) -> dict:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from ml.data import model_frame

    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    snapshot = Report([DataDriftPreset(columns=NUMERIC + CATEGORICAL, method=cfg.drift.method)],
                      include_tests=True).run(
        Dataset.from_pandas(model_frame(current, cfg), data_definition=definition),
        Dataset.from_pandas(model_frame(reference, cfg), data_definition=definition))
    return _parse(snapshot.dict())


@pytest.mark.parametrize("reference_rows", [600, 3000])
@pytest.mark.parametrize("shift", SHIFTS)
def test_decisions_and_scores_match_evidently(shift, reference_rows):
    cfg = config(decision="threshold")
    reference, current = window(reference_rows, 1), window(reference_rows // 2, 2, shift)
    ours = detect_drift(cfg, reference, current)
    theirs = evidently(reference, current, cfg)
    for column, expected in theirs.items():
        got = ours.features[column]
        assert get_statistic(got.method).display_name == expected["method"], column
        assert got.threshold == expected["threshold"], column
        assert got.drifted == expected["drifted"], (column, got, expected)
        assert got.score == pytest.approx(expected["score"], rel=1e-6, abs=1e-12), (column, got, expected)


@pytest.mark.parametrize("method", ["psi", "jensenshannon", "wasserstein", "ks"])
def test_configured_methods_match_evidently(method):
    cfg = config(decision="threshold", method=method)
    reference, current = window(2000, 3), window(800, 4, "mixed")
    numeric_only = method in ("wasserstein", "ks")
    if numeric_only:
        cfg = cfg.model_copy(update={"features": cfg.features.model_copy(update={"categorical": []})})
        reference, current = reference[NUMERIC], current[NUMERIC]
    ours = detect_drift(cfg, reference, current)
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from ml.data import model_frame

    columns = cfg.feature_columns
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=[] if numeric_only else CATEGORICAL)
    theirs = _parse(Report([DataDriftPreset(columns=columns, method=method)], include_tests=True).run(
        Dataset.from_pandas(model_frame(current, cfg), data_definition=definition),
        Dataset.from_pandas(model_frame(reference, cfg), data_definition=definition)).dict())
    for column in columns:
        got, expected = ours.features[column], theirs[column]
        assert got.drifted == expected["drifted"] and got.score == pytest.approx(expected["score"], rel=1e-6), \
            (column, got, expected)

"""Drift on outputs (ml.drift.output): the statistics on known cases, the typed result inside DriftResult, and
the retrain rule it feeds only when configured (drift.output.triggers_retrain)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from ml.config import parse_config
from ml.decision import assess_performance, decide
from ml.drift import DriftResult, FeatureDrift
from ml.drift.output import OutputDrift, compare_outputs, describe

CLASSES = ["0", "1"]


def binary(p: np.ndarray) -> np.ndarray:
    return np.column_stack([1 - p, p])


def test_same_distribution_is_stable_and_a_shift_drifts() -> None:
    rng = np.random.default_rng(0)
    reference = binary(rng.beta(2, 5, 600))
    same = compare_outputs(reference, binary(rng.beta(2, 5, 2000)), CLASSES, 1, alpha=0.05, min_effect=0.05,
                           min_rows=30)
    assert same.status == "stable" and same.drifted is False and same.test == "ks"
    moved = compare_outputs(reference, binary(rng.beta(4, 4, 2000)), CLASSES, 1, alpha=0.05, min_effect=0.05,
                            min_rows=30, champion_version="3")
    assert moved.drifted is True and moved.signal == "score:1" and moved.champion_version == "3"
    assert moved.current_mean == pytest.approx(0.5, abs=0.02) and moved.reference_mean == pytest.approx(2 / 7, abs=0.02)
    assert "outputs moved (score:1: ks" in describe(moved)


def test_the_p_value_is_the_two_sample_ks_test() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.uniform(size=400), rng.uniform(size=300) ** 1.3
    result = compare_outputs(binary(ref), binary(cur), CLASSES, 1, alpha=0.05, min_effect=0.0, min_rows=30)
    assert result.p_value == pytest.approx(stats.ks_2samp(ref, cur).pvalue, rel=1e-6)
    assert result.effect == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-6)


def test_multiclass_compares_the_predicted_classes() -> None:
    rng = np.random.default_rng(2)
    classes = ["a", "b", "c"]
    reference = rng.dirichlet([5, 2, 1], 500)
    current = rng.dirichlet([1, 2, 5], 500)
    result = compare_outputs(reference, current, classes, None, alpha=0.05, min_effect=0.05, min_rows=30)
    assert result.signal == "label" and result.test == "chi2" and result.drifted is True
    assert result.reference_mean is None


def test_few_scores_are_insufficient_data() -> None:
    result = compare_outputs(binary(np.full(10, 0.3)), binary(np.full(500, 0.3)), CLASSES, 1, alpha=0.05,
                             min_effect=0.05, min_rows=30)
    assert result.status == "insufficient_data" and result.drifted is None and "10 reference" in result.detail


def test_output_drift_round_trips_inside_the_drift_result() -> None:
    output = compare_outputs(binary(np.linspace(0, 1, 100)), binary(np.linspace(0.2, 1, 100)), CLASSES, 1,
                             alpha=0.05, min_effect=0.05, min_rows=30)
    result = DriftResult(dataset_drift=False, drifted_share=0.0, drift_share_threshold=0.5, output=output)
    back = DriftResult.from_dict(result.to_dict())
    assert back == result and isinstance(back.output, OutputDrift)
    assert result.summary()["output"]["signal"] == "score:1"


CONFIG = {"name": "m", "target": "y", "positive_class": 1, "features": {"numeric": ["x"]},
          "data": {"reference": "r.csv"}}


def _decide(triggers: bool, output_drifted: bool, labelled: int = 500):
    config = parse_config({**CONFIG, "drift": {"output": {"triggers_retrain": triggers}}})
    output = OutputDrift(signal="score:1", drifted=output_drifted, status="drifted" if output_drifted else "stable",
                         reference_rows=600, current_rows=2000, test="ks", p_value=1e-9, effect_method="wasserstein",
                         effect=0.4)
    features = {"x": FeatureDrift("wasserstein", 0.01, 0.1, False)}
    drift = DriftResult(dataset_drift=False, drifted_share=0.0, drift_share_threshold=0.5, features=features,
                        output=output)
    return decide(contract_passed=True, contract_problems=[], drift=drift,
                  performance=assess_performance("roc_auc", "1", 0.85, 0.84, labelled, 100, 0.05),
                  labelled_rows=labelled, force_retrain=False, champion_version="1", champion_trained_on_current=False,
                  min_labelled_rows=100, config=config)


def test_output_drift_changes_no_decision_unless_configured() -> None:
    assert parse_config(CONFIG).drift.output.triggers_retrain is False  # the default
    assert _decide(triggers=False, output_drifted=True).decision == "skip"
    retrain = _decide(triggers=True, output_drifted=True)
    assert (retrain.decision, retrain.rule, retrain.triggers) == ("retrain", "output_drift", ["output_drift"])
    assert "output drift: outputs moved" in retrain.reason
    assert _decide(triggers=True, output_drifted=False).rule == "no_change"
    assert _decide(triggers=True, output_drifted=True, labelled=20).decision == "skip"  # nothing to learn from


def test_output_config_keys_are_checked() -> None:
    from ml.errors import ConfigError

    with pytest.raises(ConfigError, match="drift.output.trigger_retrain: unknown key"):
        parse_config({**CONFIG, "drift": {"output": {"trigger_retrain": True}}})
    assert dataclasses.is_dataclass(OutputDrift)

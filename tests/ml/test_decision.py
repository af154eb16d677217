import pytest

from ml.decision import assess_performance, decide
from ml.drift import DriftResult, FeatureDrift


def drift(drifted: int, total: int = 9, share: float = 0.2) -> DriftResult:
    features = {f"f{i}": FeatureDrift("wasserstein", 0.5 if i < drifted else 0.01, 0.1, i < drifted)
                for i in range(total)}
    return DriftResult(dataset_drift=drifted / total >= share, drifted_share=drifted / total,
                       drift_share_threshold=share, features=features)


def perf(decayed: bool):
    return assess_performance("roc_auc", "1", 0.85, 0.70 if decayed else 0.84, 500, 100, 0.05)


BASE = dict(contract_passed=True, contract_problems=[], drift=drift(0), performance=perf(False), labelled_rows=500,
            force_retrain=False, champion_version="1", champion_trained_on_current=False)


def test_contract_failure_blocks_whatever_else():
    result = decide(**{**BASE, "contract_passed": False, "contract_problems": ["column 'x' missing"],
                       "force_retrain": True})
    assert result.decision == "blocked" and "column 'x' missing" in result.reason


def test_nothing_changed_skips_and_says_why():
    result = decide(**BASE)
    assert result.decision == "skip"
    assert "no dataset drift (0/9 features drifted" in result.reason and "no performance decay" in result.reason


def test_bootstrap_and_force():
    assert decide(**{**BASE, "champion_version": None}).triggers == ["bootstrap"]
    assert decide(**{**BASE, "force_retrain": True}).decision == "retrain"


def test_performance_decay_without_drift_is_named_as_such():
    result = decide(**{**BASE, "performance": perf(True)})
    assert result.decision == "retrain" and result.triggers == ["performance_decay"]
    assert result.reason.startswith("performance decay of champion v1: roc_auc 0.8500 -> 0.7000")
    assert "no dataset drift" in result.reason


def test_drift_with_labels_retrains_without_labels_skips():
    result = decide(**{**BASE, "drift": drift(2)})
    assert result.decision == "retrain" and result.triggers == ["data_drift"]
    assert "2/9 features drifted (22%, threshold 20%): f0, f1" in result.reason
    unlabelled = decide(**{**BASE, "drift": drift(2), "labelled_rows": 0, "performance": None})
    assert unlabelled.decision == "skip" and "no labels" in unlabelled.reason


def test_drift_with_a_few_labels_is_not_a_training_set():
    few = decide(**{**BASE, "drift": drift(2), "labelled_rows": 20, "performance": None, "min_labelled_rows": 100})
    assert few.decision == "skip"
    assert "only 20 labelled rows (< performance.min_labelled_rows 100)" in few.reason
    enough = decide(**{**BASE, "drift": drift(2), "labelled_rows": 100, "min_labelled_rows": 100})
    assert enough.decision == "retrain" and enough.triggers == ["data_drift"]


def test_both_triggers_are_reported():
    result = decide(**{**BASE, "drift": drift(3), "performance": perf(True)})
    assert result.triggers == ["performance_decay", "data_drift"]


def test_champion_already_trained_on_this_window_skips():
    result = decide(**{**BASE, "drift": drift(5), "champion_trained_on_current": True})
    assert result.decision == "skip" and "exact current window" in result.reason


@pytest.mark.parametrize(("on_current", "rows", "decayed"), [(0.70, 500, True), (0.81, 500, False),
                                                             (0.50, 10, False)])
def test_assess_performance(on_current, rows, decayed):
    result = assess_performance("roc_auc", "3", 0.85, on_current, rows, 100, 0.05)
    assert result.decayed is decayed
    assert "min_labelled_rows" in result.detail if rows < 100 else "drop" in result.detail


def test_lower_is_better_metrics_decay_upwards():
    assert assess_performance("log_loss", "1", 0.40, 0.50, 500, 100, 0.05).decayed
    assert not assess_performance("log_loss", "1", 0.40, 0.30, 500, 100, 0.05).decayed


def test_no_current_window_says_so():
    result = decide(**{**BASE, "drift": None, "performance": None, "labelled_rows": 0})
    assert result.decision == "skip" and "no current window" in result.reason

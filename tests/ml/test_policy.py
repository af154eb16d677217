"""The retrain policy: every rule of ml.decision, in order, names its rule and its inputs; the run-history
rules (k-of-n, budget) and the cooldown read real MLflow runs."""

from __future__ import annotations

import pytest

from ml.config import parse_config
from ml.decision import PolicyInputs, assess_performance, decide
from tests.ml.test_decision import BASE, drift, perf


def policy_config(**policy: object):
    return parse_config({"name": "p", "target": "y", "positive_class": 1, "features": {"numeric": ["a"]},
                         "data": {"reference": "r.csv"}, "policy": policy})


def run(policy: PolicyInputs, config=None, **changes):
    return decide(**{**BASE, **changes, "config": config or policy_config(), "policy": policy})


def estimated(drop: bool):
    return assess_performance("roc_auc", "1", 0.85, None, 0, 100, 0.05, estimated=0.70 if drop else 0.84,
                              calibrated=True)


def test_every_decision_names_its_rule_and_inputs():
    result = run(PolicyInputs(new_labelled_rows=500, hours_since_retrain=30.0, recent_drift=[False, True]),
                 drift=drift(2))
    assert result.decision == "retrain" and result.rule == "data_drift"
    assert result.inputs["hours_since_retrain"] == 30.0 and result.inputs["recent_drift"] == [False, True]
    assert result.inputs["drifted_features"] == ["f0", "f1"] and result.inputs["labelled_rows"] == 500
    assert decide(**BASE).rule == "no_change" and decide(**{**BASE, "champion_version": None}).rule == "bootstrap"


def test_budget_spent_skips_and_says_what_was_not_acted_on():
    config = policy_config(max_retrains_per_week=2)
    result = run(PolicyInputs(new_labelled_rows=500, retrains_last_week=2), config, drift=drift(3),
                 performance=perf(True))
    assert result.decision == "skip" and result.rule == "budget"
    assert "2 retrains in the last 7 days" in result.reason and "not acted on: performance decay" in result.reason
    assert run(PolicyInputs(new_labelled_rows=500, retrains_last_week=1), config, drift=drift(3)).decision == "retrain"
    forced = run(PolicyInputs(retrains_last_week=9), config, force_retrain=True)
    assert forced.decision == "retrain" and forced.rule == "forced"


def test_cooldown_holds_drift_back_but_not_a_measured_decay():
    config = policy_config(cooldown="1d")
    soon = PolicyInputs(new_labelled_rows=500, hours_since_retrain=5.0)
    held = run(soon, config, drift=drift(3))
    assert held.decision == "skip" and held.rule == "cooldown" and "5.0 h ago" in held.reason
    assert run(soon, config, drift=drift(3), performance=perf(True)).rule == "performance_decay"
    later = PolicyInputs(new_labelled_rows=500, hours_since_retrain=30.0)
    assert run(later, config, drift=drift(3)).decision == "retrain"


def test_k_of_n_debounces_a_single_drifted_run():
    config = policy_config(k_of_n=[2, 3])
    once = run(PolicyInputs(new_labelled_rows=500, recent_drift=[False, False]), config, drift=drift(3))
    assert once.decision == "skip" and once.rule == "debounced" and "in 1 of the last 3 runs" in once.reason
    twice = run(PolicyInputs(new_labelled_rows=500, recent_drift=[False, True]), config, drift=drift(3))
    assert twice.decision == "retrain" and twice.rule == "data_drift"


def test_an_estimated_drop_without_labels_waits_for_them():
    result = run(PolicyInputs(new_labelled_rows=0), drift=drift(0), performance=estimated(True), labelled_rows=0)
    assert result.decision == "skip" and result.rule == "estimated_decay"
    assert "waiting for labels" in result.reason and result.inputs["estimated"] == 0.70
    assert run(PolicyInputs(), drift=drift(0), performance=estimated(False), labelled_rows=0).rule == "no_change"


def test_drift_without_labels_and_new_labels_only():
    result = run(PolicyInputs(new_labelled_rows=0), drift=drift(3), performance=None, labelled_rows=0)
    assert result.rule == "drift_without_labels" and "no labels" in result.reason


def test_policy_config_is_validated():
    from ml.errors import ConfigError

    with pytest.raises(ConfigError, match="policy.cooldown: .*expected a duration"):
        policy_config(cooldown="soon")
    with pytest.raises(ConfigError, match=r"policy.k_of_n: .*1 <= k <= n"):
        policy_config(k_of_n=[3, 2])


@pytest.mark.e2e
def test_the_run_history_debounces_drift_then_retrains(ct_home, tmp_path):
    """k_of_n [2, 2] on real runs: bootstrap, then a drifted window is held back once (1 of 2 runs drifted),
    and the next drifted run retrains."""
    from ml.config import load_config
    from ml.pipeline import run_pipeline
    from tests.conftest import DATA, write_config

    # drift alone decides here: on this window the champion's AUC also drops ~0.06 and its calibration breaks
    config = load_config(write_config(tmp_path, policy={"k_of_n": [2, 2]},
                                      performance={"max_decay": 0.5, "max_calibration_gap": 1.0}))
    assert run_pipeline(config, "r1").status == "promoted"
    drifted = config.with_data(current=str(DATA / "current_covariate_drift.csv"))
    held = run_pipeline(drifted, "r2").to_dict()
    assert held["status"] == "skipped" and "policy.k_of_n asks for 2 of 2" in held["reason"], held["reason"]
    again = run_pipeline(drifted, "r3").to_dict()
    assert again["decision"] == "retrain" and again["triggers"] == ["data_drift"], again["reason"]


@pytest.mark.e2e
def test_cooldown_and_budget_read_the_registry_and_the_runs(ct_home, tmp_path):
    from ml.config import load_config
    from ml.pipeline import run_pipeline
    from tests.conftest import DATA, write_config

    config = load_config(write_config(tmp_path, policy={"cooldown": "1d", "max_retrains_per_week": 1}))
    assert run_pipeline(config, "r1").status == "promoted"
    drifted = config.with_data(current=str(DATA / "current_covariate_drift.csv"))
    result = run_pipeline(drifted, "r2").to_dict()
    assert result["status"] == "skipped" and result["reason"].startswith("retrain budget spent: 1 retrains"), \
        result["reason"]


def test_a_run_started_in_the_second_its_champion_was_registered_is_not_within_a_null_cooldown():
    """The run's start is kept to the second, the version's registration to the millisecond: the hours between
    them are never negative, so `policy.cooldown: null` never skips a drifted window."""
    from datetime import UTC, datetime

    from ml.steps.check import hours_since

    as_of = datetime(2026, 12, 4, 20, 26, 40, tzinfo=UTC)  # started_at, truncated to the second
    registered_ms = int(as_of.timestamp() * 1000) + 48  # the champion, 48 ms into that second
    hours = hours_since(as_of, registered_ms)
    assert hours == 0.0
    assert hours_since(as_of, registered_ms - 3_600_048) == pytest.approx(1.0)
    result = run(PolicyInputs(new_labelled_rows=500, hours_since_retrain=hours), drift=drift(2))
    assert result.decision == "retrain" and result.rule == "data_drift"
    cooled = run(PolicyInputs(new_labelled_rows=500, hours_since_retrain=hours), policy_config(cooldown="1h"),
                 drift=drift(2))
    assert cooled.decision == "skip" and cooled.rule == "cooldown"

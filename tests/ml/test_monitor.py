"""The monitor's pure parts (ml.monitor.judge_error_rate) on known counts, and the new config sections'
validation (monitoring, batch)."""

from __future__ import annotations

import pytest

from ml.config import parse_config
from ml.errors import ConfigError
from ml.monitor import MonitorReport, judge_error_rate

CONFIG = {"name": "m", "target": "y", "positive_class": 1, "features": {"numeric": ["x"]},
          "data": {"reference": "r.csv"}}


def labels(errors: int, n: int) -> tuple[list[str], list[str]]:
    return ["1"] * errors + ["0"] * (n - errors), ["0"] * n


def test_error_rate_reaches_the_factor_of_its_baseline() -> None:
    predicted, actual = labels(30, 100)  # 30% errors vs a 20% baseline: 1.5 x 0.2 = 0.3 -> breached
    result = judge_error_rate(predicted, actual, 40, 200, factor=1.5, min_labelled=50)
    assert (result.rate, result.baseline, result.threshold, result.breached) == (0.3, 0.2, pytest.approx(0.3), True)
    assert "error rate 0.300 on 100 labelled predictions >= 1.5 x holdout baseline 0.200" in result.detail
    below = judge_error_rate(*labels(29, 100), 40, 200, factor=1.5, min_labelled=50)
    assert below.breached is False


def test_too_few_labels_or_no_baseline_is_not_judged() -> None:
    few = judge_error_rate(*labels(10, 20), 40, 200, factor=1.5, min_labelled=50)
    assert few.breached is None and few.rate == 0.5 and "monitoring.min_labelled 50" in few.detail
    none = judge_error_rate(*labels(10, 100), 0, 0, factor=1.5, min_labelled=50)
    assert none.breached is None and none.baseline is None


def test_a_perfect_holdout_floors_the_baseline_at_one_error() -> None:
    result = judge_error_rate(*labels(1, 100), 0, 200, factor=1.5, min_labelled=50)
    assert result.threshold == pytest.approx(1.5 / 200) and result.breached is True  # 1% >= 0.75%
    assert judge_error_rate(*labels(0, 100), 0, 200, factor=1.5, min_labelled=50).breached is False


def test_report_round_trips_and_names_the_retraining_params() -> None:
    error = judge_error_rate(*labels(30, 100), 40, 200, factor=1.5, min_labelled=50)
    report = MonitorReport(model="m", checked_at="2026-03-01T00:00:00+00:00", champion_version="2",
                           prediction_log="/log", since=None, predictions=100, error_rate=error, retrain=True,
                           reasons=[error.detail])
    assert MonitorReport.from_dict(report.to_dict()) == report
    assert report.retrain_conf(True) == {"current_path": "/log", "force_retrain": True, "reference_path": None,
                                         "training_backend": None}


def test_monitoring_and_batch_defaults_and_errors() -> None:
    config = parse_config(CONFIG)
    assert config.monitoring.error_rate_factor == 1.5 and config.monitoring.schedule == "@hourly"
    assert config.batch.input_path is None and config.batch.chunk_rows == 65_536 and config.batch.on_promotion
    with pytest.raises(ConfigError, match="monitoring.error_rate_factor: Input should be greater than 1"):
        parse_config({**CONFIG, "monitoring": {"error_rate_factor": 0.9}})
    with pytest.raises(ConfigError, match="monitoring.window: expected null, '<N>d' or '<N>h'"):
        parse_config({**CONFIG, "monitoring": {"window": "since_champion"}})
    with pytest.raises(ConfigError, match="batch.backend"):
        parse_config({**CONFIG, "batch": {"backend": "spark"}})
    with pytest.raises(ConfigError, match="batch.chunk_size: unknown key"):
        parse_config({**CONFIG, "batch": {"chunk_size": 10}})

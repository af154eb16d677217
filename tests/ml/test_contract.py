import pandas as pd
import pytest

from ml.config import load_config, parse_config
from ml.contract import check_contract
from ml.data import Window, read_window
from ml.errors import DataError
from tests.conftest import DATA, DEMO_CONFIG


@pytest.fixture(scope="module")
def config():
    return load_config(DEMO_CONFIG)


@pytest.fixture(scope="module")
def reference():
    return read_window(str(DATA / "reference.csv"))


def test_clean_windows_pass(config, reference):
    result = check_contract(config, reference, read_window(str(DATA / "current_no_drift.csv")))
    assert result.passed, result.problems
    assert (result.reference_rows, result.current_rows, result.current_labelled_rows) == (5000, 2000, 2000)


def test_unlabelled_current_window_is_allowed(config, reference):
    result = check_contract(config, reference, read_window(str(DATA / "current_unlabelled.csv")))
    assert result.passed and result.current_labelled_rows == 0


@pytest.mark.parametrize(("file", "expected"), [
    ("bad_missing_column.csv", "column 'salary' missing from current window"),
    ("bad_wrong_type.csv", "column 'age' in current window must be numeric"),
    ("bad_all_nan.csv", "column 'satisfaction_score' in current window is entirely empty"),
    ("bad_empty.csv", "has 0 rows (contract.min_rows: 50)"),
])
def test_bad_windows_fail_naming_the_column(config, reference, file, expected):
    result = check_contract(config, reference, read_window(str(DATA / file)))
    assert not result.passed
    assert any(expected in p for p in result.problems), result.problems


def test_a_zero_byte_file_is_a_data_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.touch()
    with pytest.raises(DataError, match="is empty"):
        read_window(str(empty))
    with pytest.raises(DataError, match="not found"):
        read_window(str(tmp_path / "missing.csv"))


def _window(frame):
    return Window(frame=frame, path="mem", sha256="x")


def test_ranges_nulls_infinities_and_unseen_categories():
    config = parse_config({
        "name": "m", "target": "y", "positive_class": 1, "features": {"numeric": ["a"], "categorical": ["c"]},
        "data": {"reference": "r.csv"}, "contract": {"min_rows": 1, "max_null_fraction": 0.3,
                                                     "columns": {"a": {"min": 0, "max": 10}}}})
    ref = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "c": ["x", "y", "x", "y"], "y": [0, 1, 0, 1]})
    cur = pd.DataFrame({"a": [1.0, 50.0, float("inf"), None], "c": ["x", "z", "z", "x"]})
    result = check_contract(config, _window(ref), _window(cur))
    text = " | ".join(result.problems)
    assert "values outside [0.0, 10.0]" in text
    assert "1 infinite values" in text
    assert "categories never seen in reference, e.g. 'z'" in text
    warn = config.model_copy(update={"contract": config.contract.model_copy(update={"on_unseen_category": "warn"})})
    relaxed = check_contract(warn, _window(ref), _window(cur[cur.c != "x"].assign(a=[1.0, 2.0])))
    assert relaxed.passed and "never seen" in relaxed.warnings[0]
    cur_nulls = pd.DataFrame({"a": [None, None, 1.0, 2.0], "c": ["x"] * 4})
    assert "50.0% missing values" in " ".join(check_contract(config, _window(ref), _window(cur_nulls)).problems)


def test_target_rules():
    config = parse_config({"name": "m", "target": "y", "positive_class": "yes", "features": {"numeric": ["a"]},
                           "data": {"reference": "r.csv"}, "contract": {"min_rows": 1}})
    ref = pd.DataFrame({"a": [1.0, 2.0], "y": ["no", "no"]})
    problems = check_contract(config, _window(ref), None).problems
    assert any("positive_class 'yes' never occurs" in p for p in problems)
    assert any("single class" in p for p in problems)
    no_target = check_contract(config, _window(ref.drop(columns="y")), None).problems
    assert any("target column 'y' missing from reference window" in p for p in no_target)


def test_unseen_categories_below_the_fraction_warn_and_above_it_block():
    """contract.max_unseen_fraction: one odd request among many is counted, not a blocked window."""
    config = parse_config({"name": "m", "target": "y", "positive_class": 1, "features": {"categorical": ["c"]},
                           "data": {"reference": "r.csv"},
                           "contract": {"min_rows": 1, "max_unseen_fraction": 0.05}})
    ref = pd.DataFrame({"c": ["x", "y"] * 10, "y": [0, 1] * 10})
    few = pd.DataFrame({"c": ["x"] * 99 + ["zzz"]})  # 1%
    result = check_contract(config, _window(ref), _window(few))
    assert result.passed
    assert result.warnings == ["column 'c' in current window has 1 rows (1.0%) with categories never seen in "
                               "reference, e.g. 'zzz': within contract.max_unseen_fraction 5.0%"]
    many = pd.DataFrame({"c": ["x"] * 90 + ["zzz"] * 10})  # 10%
    blocked = check_contract(config, _window(ref), _window(many))
    assert not blocked.passed and "10 rows (10.0%)" in blocked.problems[0]
    assert "above contract.max_unseen_fraction 5.0%" in blocked.problems[0]

from pathlib import Path

import pytest
import yaml

from ml.config import load_config, parse_config
from ml.data import read_window
from ml.errors import ConfigError, DataError
from tests.conftest import DATA, DEMO_CONFIG

MINIMAL = {"name": "m", "target": "y", "positive_class": 1, "features": {"numeric": ["a"]},
           "data": {"reference": "r.csv"}}


def test_demo_config_loads_and_resolves_paths_relative_to_the_file():
    config = load_config(DEMO_CONFIG)
    assert config.name == "employee-attrition"
    assert Path(config.reference_path) == DATA / "reference.csv"
    assert config.features.categorical == ["department"]
    assert config.drift.drift_share == 0.2
    assert config.gates.max_regression == 0.02  # default kept where the file is silent


@pytest.mark.parametrize(("change", "message"), [
    ({"gates": {"max_regresion": 0.1}}, "gates.max_regresion: unknown key"),
    ({"target": None}, "target: Input should be a valid string"),
    ({"gates": {"max_regression": "high"}}, "gates.max_regression: Input should be a valid number"),
    ({"positive_class": None}, "positive_class: required when task is binary"),
    ({"features": {"numeric": ["a", "a"]}}, "features: ['a'] listed more than once"),
    ({"features": {"numeric": ["y"]}}, "target: 'y' is also listed as a feature"),
    ({"gates": {"min_metrics": {"auc": 0.7}}}, "unknown metric(s) ['auc']"),
    ({"deploy": {"host": "0.0.0.0"}}, "deploy.host: the local target binds to loopback only"),
    ({"task": "regression"}, "task: Input should be 'binary' or 'multiclass'"),
    ({"name": "my model!"}, "name: must start with a letter or digit"),
    ({"drift": {"columns": {"zzz": {"method": "psi"}}}}, "drift.columns: ['zzz'] are not features"),
    ({"contract": {"max_null_fraction": 1.5}}, "contract.max_null_fraction: Input should be less than or equal to 1"),
])
def test_invalid_configs_name_the_key(change, message):
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **change}, source="m.yaml")
    assert message in str(err.value)
    assert "m.yaml" in str(err.value)


def test_missing_key_is_named():
    raw = {k: v for k, v in MINIMAL.items() if k != "data"}
    with pytest.raises(ConfigError, match="data: missing required key"):
        parse_config(raw)


def test_strict_types_do_not_coerce_strings():
    with pytest.raises(ConfigError, match="deploy.port"):
        parse_config({**MINIMAL, "deploy": {"port": "8080"}})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def _write(folder: Path, raw: dict) -> Path:
    path = folder / "written.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_with_data_overrides_resolve_against_the_working_directory(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    monkeypatch.chdir(tmp_path)
    config = load_config(path).with_data(current="new.csv")
    assert config.current_path == str(tmp_path / "new.csv")
    assert config.reference_path == str(tmp_path / "r.csv")
    url = config.with_data(reference="s3://bucket/ref.parquet")  # a DAG param a UI user sets: local paths only
    with pytest.raises(DataError, match=r"window path 's3://bucket/ref.parquet': URLs \(s3://\) are not read"):
        read_window(url.reference_path, limits=url.data.limits)
    allowed = load_config(_write(tmp_path, MINIMAL | {"data": MINIMAL["data"] | {"allowed_schemes": ["s3"]}}))
    assert allowed.with_data(reference="s3://bucket/ref.parquet").reference_path == "s3://bucket/ref.parquet"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/secret.csv", "s3://bucket/x.csv", "gs://b/x.parquet",
                                 "HTTPS://h/x.csv"])
def test_urls_in_the_config_are_refused_unless_their_scheme_is_allowed(tmp_path, url):
    with pytest.raises(ConfigError, match=r"data.current .*URLs .* are not read.*data.allowed_schemes"):
        load_config(_write(tmp_path, MINIMAL | {"data": MINIMAL["data"] | {"current": url}}))
    with pytest.raises(ConfigError, match="allowed_schemes: .*expected lower-case URL schemes"):
        load_config(_write(tmp_path, MINIMAL | {"data": MINIMAL["data"] | {"allowed_schemes": ["s3://"]}}))


@pytest.mark.parametrize(("change", "message"), [
    ({"schedule": 5}, "schedule: expected a cron expression or preset"),
    ({"schedule": {}}, "schedule: give a cron expression, assets, or both"),
    ({"schedule": {"cron": "@daily", "asets": []}}, "schedule.asets: unknown key"),
    ({"promotion": {"approval": "maybe"}}, "promotion.approval: Input should be 'auto' or 'required'"),
    ({"data": {"reference": "r.csv", "current_window": "1 week"}}, "data.current_window: expected null, '<N>d'"),
    ({"contract": {"max_unseen_fraction": 2}}, "contract.max_unseen_fraction"),
    ({"task_timeout_s": 5}, "task_timeout_s: Input should be greater than or equal to 60"),
])
def test_the_many_models_keys_name_their_problems(change, message):
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, **change}, source="m.yaml")
    assert message in str(err.value)


def test_the_many_models_keys_and_their_defaults():
    config = parse_config(MINIMAL)
    assert not config.schedule_is_set and config.promotion.approval == "auto"
    assert config.promotion.approval_timeout_h == 72 and config.task_timeout_s == 3600
    assert config.contract.max_unseen_fraction == 0.01 and config.data.current_window is None
    manual = parse_config({**MINIMAL, "schedule": None, "data": {"reference": "r.csv", "current_window": "7d"}})
    assert manual.schedule_is_set and manual.schedule is None and manual.data.current_window_hours == 168
    assets = parse_config({**MINIMAL, "schedule": {"cron": "0 6 * * *", "assets": ["current_window"]}})
    assert assets.schedule.cron == "0 6 * * *" and assets.schedule.assets == ["current_window"]
    assert parse_config({**MINIMAL, "promotion": {"approval": "required"}}).promotion.approval_required

"""The model catalog the DAG files are built from: schedules as Airflow takes them, the Assets, timeouts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ct_airflow.catalog import dag_schedule, load_catalog, model_asset, remote_timeout, window_asset
from ml.config import load_config
from ml.errors import ConfigError
from tests.conftest import DATA, write_config


def config(tmp_path, **changes):
    return load_config(write_config(tmp_path, **changes))


def test_schedules(tmp_path, monkeypatch):
    from airflow.sdk import AssetAny, AssetOrTimeSchedule

    monkeypatch.setenv("CT_SCHEDULE", "*/5 * * * *")
    assert dag_schedule(config(tmp_path / "a")) == "*/5 * * * *"  # no `schedule:` key: the deployment's default
    monkeypatch.delenv("CT_SCHEDULE")
    assert dag_schedule(config(tmp_path / "b")) == "@daily"
    assert dag_schedule(config(tmp_path / "c", schedule=None)) is None  # manual and API runs only
    assert dag_schedule(config(tmp_path / "d", schedule="@hourly")) == "@hourly"
    on_data = dag_schedule(config(tmp_path / "e", schedule={"assets": ["current_window", "s3://bucket/extra"]}))
    assert isinstance(on_data, AssetAny) and [a.uri for a in on_data.objects] == [
        (DATA / "current_no_drift.csv").as_uri(), "s3://bucket/extra"]
    both = dag_schedule(config(tmp_path / "f", schedule={"cron": "0 6 * * *", "assets": ["current_window"]}))
    assert isinstance(both, AssetOrTimeSchedule) and both.timetable.expression == "0 6 * * *"
    with pytest.raises(ConfigError, match="neither a cron expression"):
        dag_schedule(config(tmp_path / "g", schedule="daily"))
    with pytest.raises(ConfigError, match="with assets give a cron expression"):
        dag_schedule(config(tmp_path / "h", schedule={"cron": "@daily", "assets": ["current_window"]}))


def test_assets_name_the_model(tmp_path):
    cfg = config(tmp_path, name="churn")
    assert (window_asset(cfg).name, window_asset(cfg).uri) == ("churn.current_window",
                                                              (DATA / "current_no_drift.csv").as_uri())
    assert (model_asset(cfg).name, model_asset(cfg).uri) == ("churn.champion", "models:/churn@champion")
    no_current = config(tmp_path / "n", name="churn", data={"reference": str(DATA / "reference.csv"),
                                                            "current": None})
    assert window_asset(no_current).uri == "x-ct-window://churn"


def test_remote_steps_get_at_least_their_own_time(tmp_path):
    cfg = config(tmp_path, task_timeout_s=120, training={"kubernetes": {"timeout_s": 1800}})
    assert remote_timeout(cfg, "train_kubernetes") == timedelta(seconds=1800 + 600 + 600)
    assert remote_timeout(cfg, "train_databricks") == timedelta(seconds=7200 + 600)
    assert remote_timeout(config(tmp_path / "big", task_timeout_s=100_000), "deploy_kubernetes") == \
        timedelta(seconds=100_000)


def test_a_missing_config_folder_is_an_error_not_a_crash(tmp_path):
    catalog = load_catalog(tmp_path / "nope")
    assert catalog.models == [] and "does not exist (set CT_CONFIG_DIR)" in next(iter(catalog.errors.values()))

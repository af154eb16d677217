"""Every task of every model DAG has an execution_timeout from its config: `task_timeout_s` for the steps that
read data or train, at most 600 s for the light ones, `task_timeouts.<kind>` overrides, and remote steps at
least their backend's own limit plus start-up (README "Timeouts")."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ct_airflow.catalog import TASK_KIND, task_timeout
from ml.config import TASK_KINDS, load_config
from ml.errors import ConfigError
from tests.conftest import write_config
from tests.dags.test_dag_integrity import bag, model_folder

H = 3600
#: task name -> execution_timeout (s) with the defaults: task_timeout_s 3600, kubernetes pod 3600 s + 600 s
#: start-up, Databricks run 7200 s, rollout 300 s; remote steps get 600 s more than their own limit.
DEFAULTS = {"validate_data": H, "drift": H, "drift_report": H, "performance": H, "decide": 600,
            "choose_backend": 600, "skip": 600, "train_local": H, "train_kubernetes": H + 600 + 600,
            "train_databricks": 7200 + 600, "gates": H, "register": 600, "approve": 600, "choose_target": 600,
            "deploy_local": H, "deploy_kubernetes": H, "promote": 600, "run_record": 600, "rollback": H}
OVERRIDES = {"task_timeout_s": 1200, "task_timeouts": {"train": 9000, "gates": 900, "record": 120, "rollback": 300}}
WITH_OVERRIDES = DEFAULTS | {"validate_data": 1200, "drift": 1200, "drift_report": 1200, "performance": 1200,
                             "train_local": 9000, "train_kubernetes": 9000, "train_databricks": 9000, "gates": 900,
                             "run_record": 120, "deploy_local": 1200, "deploy_kubernetes": 1200, "rollback": 300}


@pytest.fixture(scope="module")
def timeout_bag(airflow_db, tmp_path_factory):
    folder = model_folder(tmp_path_factory.mktemp("timeouts"),
                          plain={"name": "plain", "promotion": {"approval": "required"}},
                          tuned={"name": "tuned", "promotion": {"approval": "required"}, **OVERRIDES})
    with pytest.MonkeyPatch.context() as monkeypatch:
        dagbag = bag(folder, monkeypatch)
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag


@pytest.mark.parametrize(("model", "expected"), [("plain", DEFAULTS), ("tuned", WITH_OVERRIDES)])
def test_every_task_has_the_timeout_of_its_kind(timeout_bag, model, expected):
    tasks = [t for kind in ("retrain", "rollback") for t in timeout_bag.get_dag(f"{model}.{kind}").tasks]
    seen = {t.task_id.rsplit(".", 1)[-1]: t.execution_timeout for t in tasks}
    assert set(seen) == set(expected), "a task without an expected timeout: extend DEFAULTS"
    assert {name: value.total_seconds() for name, value in seen.items()} == expected


def test_every_task_kind_is_a_config_kind_and_unknown_tasks_are_refused(tmp_path):
    assert set(TASK_KIND.values()) == set(TASK_KINDS)
    config = load_config(write_config(tmp_path))
    with pytest.raises(ValueError, match="'retrain.new_step' has no timeout kind"):
        task_timeout(config, "retrain.new_step")
    assert task_timeout(config, "release.promote") == timedelta(seconds=600)


@pytest.mark.parametrize(("timeouts", "message"), [
    ({"trian": 600}, "task_timeouts: unknown task kind 'trian'; kinds: validate, drift"),
    ({"train": 30}, "task_timeouts: train: at least 60 seconds"),
    ({"train": "long"}, "task_timeouts.train: Input should be a valid integer"),
])
def test_bad_timeouts_are_refused_naming_the_key(tmp_path, timeouts, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(write_config(tmp_path, task_timeouts=timeouts))

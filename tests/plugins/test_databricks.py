"""The `databricks` training backend, short of a workspace:

- the runs/submit payload (job cluster, python_wheel_task running the `ct-ml` entry point of the project
  wheel with `train --config ... --run-key ...`, secrets as {{secrets/...}} references, params from the
  config) is asserted and parses with the databricks-sdk jobs dataclasses without loss;
- the provider's DatabricksSubmitRunOperator, built by DatabricksTrainOperator with the connection
  databricks_default, sends exactly that payload;
- the wheel is built for real (pip wheel) and its entry point trains for real: a fake Jobs API at the
  provider hook's boundary runs the submitted python_wheel_task as a local process (the wheel on
  sys.path, spark_env_vars with secrets resolved), against a temp MLflow store, and the operator returns
  the step's result from MLflow; a job that fails before the step ran is left to the task's retries.
"""

from __future__ import annotations

import email
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from airflow.providers.databricks.hooks.databricks import DatabricksHook
from airflow.providers.databricks.utils.databricks import normalise_json_content
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from databricks.sdk.service import compute, jobs

from ct_airflow.databricks import DatabricksTrainOperator, idempotency_token, submit_run_payload
from ml.config import load_config
from ml.errors import ConfigError
from tests.conftest import REPO, write_config

WHEEL_PATH = "/Volumes/ml/ct/artifacts/ct_retraining-0.1.0-py3-none-any.whl"
REQUIREMENTS = "/Volumes/ml/ct/artifacts/requirements-ml.txt"
CLUSTER_CONFIG = "/Volumes/ml/ct/configs/model.yaml"


def databricks_config(folder: Path, **databricks) -> Path:
    return write_config(folder, training={"backend": "databricks", "databricks": {
        "wheel": WHEEL_PATH, "requirements": REQUIREMENTS, "config_path": CLUSTER_CONFIG, **databricks}})


class TI:
    """The parts of a RuntimeTaskInstance the operators use."""

    stats_tags: dict[str, str] = {}

    def __init__(self, try_number: int = 1) -> None:
        self.try_number = try_number
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcom[key] = value


# ---- the payload --------------------------------------------------------------------------------------

def test_submit_payload_runs_the_cli_from_the_wheel_on_a_job_cluster(tmp_path):
    config = load_config(databricks_config(tmp_path))
    payload = submit_run_payload(config, run_key="scheduled__2026-03-01T00:00:00+00:00",
                                 current_path="/Volumes/ml/ct/data/march.parquet", idempotency_token="t" * 64,
                                 config_sha256="c" * 64)
    assert payload == {
        "run_name": "ct-train employee-attrition scheduled__2026-03-01T00:00:00+00:00",
        "timeout_seconds": 7200,
        "idempotency_token": "t" * 64,
        "tasks": [{
            "task_key": "train",
            "description": "python -m ml train for model employee-attrition",
            "new_cluster": {
                "spark_version": "15.4.x-cpu-ml-scala2.12",
                "node_type_id": "i3.xlarge",
                "num_workers": 0,
                "spark_conf": {"spark.databricks.cluster.profile": "singleNode", "spark.master": "local[*]"},
                "custom_tags": {"ct-model": "employee-attrition", "ResourceClass": "SingleNode"},
                "spark_env_vars": {"CT_HOME": "/tmp/ct", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                                   "PYTHONUNBUFFERED": "1", "CT_CONFIG_SHA256": "c" * 64,
                                   "MLFLOW_TRACKING_URI": "{{secrets/ct/mlflow-tracking-uri}}"},
            },
            "python_wheel_task": {
                "package_name": "ct-retraining",
                "entry_point": "ct-ml",
                "parameters": ["train", "--config", CLUSTER_CONFIG, "--run-key", "scheduled__2026-03-01T00:00:00+00:00",
                               "--current", "/Volumes/ml/ct/data/march.parquet"],
            },
            "libraries": [{"requirements": REQUIREMENTS}, {"whl": WHEEL_PATH}],
            "timeout_seconds": 7200,
        }],
    }


def test_cluster_spec_comes_from_the_config(tmp_path):
    config = load_config(databricks_config(
        tmp_path, num_workers=4, node_type_id="Standard_D8ds_v5", spark_version="16.4.x-cpu-ml-scala2.12",
        policy_id="ABC123", requirements=None, timeout_s=1800,
        env_secrets={"MLFLOW_TRACKING_URI": "mlops/tracking-uri", "AWS_ACCESS_KEY_ID": "mlops/s3-key"}))
    payload = submit_run_payload(config, run_key="r")
    (task,) = payload["tasks"]
    cluster = task["new_cluster"]
    assert cluster["num_workers"] == 4 and "spark_conf" not in cluster and "ResourceClass" not in cluster["custom_tags"]
    assert cluster["node_type_id"] == "Standard_D8ds_v5" and cluster["spark_version"] == "16.4.x-cpu-ml-scala2.12"
    assert cluster["policy_id"] == "ABC123" and cluster["apply_policy_default_values"] is True
    assert cluster["spark_env_vars"]["AWS_ACCESS_KEY_ID"] == "{{secrets/mlops/s3-key}}"
    assert task["libraries"] == [{"whl": WHEEL_PATH}]  # the wheel's own pinned dependencies
    assert payload["timeout_seconds"] == task["timeout_seconds"] == 1800
    assert "idempotency_token" not in payload


def test_payload_round_trips_through_the_databricks_sdk(tmp_path):
    config = load_config(databricks_config(tmp_path, policy_id="P1"))
    payload = submit_run_payload(config, run_key="manual__1", reference_path="/Volumes/ref.csv",
                                 idempotency_token=idempotency_token("retraining", "manual__1", "t", 1))
    for task in payload["tasks"]:
        parsed = jobs.SubmitTask.from_dict(task)
        assert parsed.as_dict() == task  # no key lost: every key is a field the API knows
        assert isinstance(parsed.new_cluster, compute.ClusterSpec) and parsed.new_cluster.num_workers == 0
        assert parsed.python_wheel_task.entry_point == "ct-ml"
        assert [lib.whl or lib.requirements for lib in parsed.libraries] == [REQUIREMENTS, WHEEL_PATH]

    class Recorder:  # the SDK's HTTP client: what JobsAPI.submit would POST
        class _cfg:
            workspace_id = None

        def do(self, method, path, body=None, headers=None):
            self.request = (method, path, body)
            return {"run_id": 7}

    recorder = Recorder()
    top = {k: v for k, v in payload.items() if k != "tasks"}
    wait = jobs.JobsAPI(recorder).submit(**top, tasks=[jobs.SubmitTask.from_dict(t) for t in payload["tasks"]])
    assert wait.run_id == 7
    assert recorder.request == ("POST", "/api/2.2/jobs/runs/submit", payload)


def test_wheel_and_cluster_config_path_are_required(tmp_path):
    config = load_config(write_config(tmp_path, training={"backend": "databricks"}))
    with pytest.raises(ConfigError, match=r"training\.databricks\.wheel, training\.databricks\.config_path: "
                                          r"required for training\.backend databricks"):
        submit_run_payload(config, run_key="r")
    with pytest.raises(ConfigError, match=r"expected a Databricks secret as 'scope/key'"):
        load_config(databricks_config(tmp_path / "bad", env_secrets={"MLFLOW_TRACKING_URI": "https://mlflow"}))


def test_the_job_refuses_a_config_that_is_not_the_one_airflow_read(tmp_path, monkeypatch, capsys):
    from ml.cli import main

    path = databricks_config(tmp_path)
    monkeypatch.setenv("CT_CONFIG_SHA256", "0" * 64)  # what spark_env_vars carries
    assert main(["validate-data", "--config", str(path)]) == 2
    assert "is not the config Airflow validated" in capsys.readouterr().err
    monkeypatch.setenv("CT_CONFIG_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    assert main(["status", "--config", str(tmp_path / "missing.yaml")]) == 2  # the usual message then
    assert "config file" in capsys.readouterr().err


def test_idempotency_token_is_one_run_per_try():
    token = idempotency_token("retraining", "manual__1", "retrain.train_databricks", 1)
    assert len(token) == 64 and int(token, 16) >= 0
    assert token == idempotency_token("retraining", "manual__1", "retrain.train_databricks", 1)
    assert token != idempotency_token("retraining", "manual__1", "retrain.train_databricks", 2)
    assert token != idempotency_token("retraining", "manual__2", "retrain.train_databricks", 1)


def test_the_provider_operator_sends_the_payload_unchanged(tmp_path):
    path = databricks_config(tmp_path)
    op = DatabricksTrainOperator(task_id="train_databricks", config_path=str(path), run_key="manual__1",
                                 polling_period_seconds=5)
    assert op.config_path == str(path) and op.run_key == "manual__1"  # __init__ only assigns
    context = {"ti": TI(try_number=3)}
    submit = op.inner_operator(context)
    assert submit.databricks_conn_id == "databricks_default"
    assert submit.wait_for_termination is True and submit.deferrable is False and submit.polling_period_seconds == 5
    expected = submit_run_payload(load_config(path), run_key="manual__1",
                                  idempotency_token=idempotency_token(op.dag_id, "manual__1", "train_databricks", 3),
                                  config_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert submit.json == expected
    # What the hook POSTs: the provider's normalisation (numbers as strings) and nothing injected: no DAG
    # params in named_parameters, the {{secrets/...}} references untouched by Jinja.
    sent = submit._prepare_submit_json(context)
    assert sent == normalise_json_content(expected)
    wheel_task = sent["tasks"][0]["python_wheel_task"]
    assert "named_parameters" not in wheel_task and wheel_task["parameters"][0] == "train"
    assert sent["tasks"][0]["new_cluster"]["spark_env_vars"]["MLFLOW_TRACKING_URI"] == \
        "{{secrets/ct/mlflow-tracking-uri}}"
    assert jobs.SubmitTask.from_dict(sent["tasks"][0]).task_key == "train"
    deferring = DatabricksTrainOperator(task_id="t", config_path=str(path), deferrable=True)
    assert deferring.inner_operator(context).deferrable is True


# ---- the wheel, and the entry point running for real -------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` of the project (pyproject.toml), from a copy of what it packages."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(REPO / "ml", src / "ml", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "docker").mkdir()
    shutil.copy2(REPO / "docker" / "requirements-ml.txt", src / "docker" / "requirements-ml.txt")
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (path,) = out.glob("*.whl")
    return path


def test_the_wheel_packages_the_cli_entry_point(wheel):
    defaults = load_config(REPO / "configs" / "employee-attrition.yaml").training.databricks
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        metadata = email.message_from_bytes(z.read(f"{dist_info}/METADATA"))
    assert {n.split("/")[0] for n in names} == {"ml", dist_info}
    assert {"ml/cli.py", "ml/pipeline.py", "ml/train.py", "ml/deploy/kubernetes.py"} <= set(names)
    assert f"{defaults.entry_point} = ml.cli:entrypoint" in entry_points.splitlines()
    assert metadata["Name"] == defaults.package_name
    pins = [line.strip() for line in (REPO / "docker" / "requirements-ml.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert sorted(metadata.get_all("Requires-Dist")) == sorted(pins)


#: What the job cluster does with a python_wheel_task: install the wheel, look the entry point up in its
#: metadata, call it in-process with the task's parameters as argv.
LAUNCHER = """
import importlib.metadata, sys
wheel, package, entry_point, *parameters = sys.argv[1:]
sys.path.insert(0, wheel)
(ep,) = [e for e in importlib.metadata.distribution(package).entry_points if e.name == entry_point]
sys.argv = [entry_point, *parameters]
main = ep.load()
import ml
print("ml imported from", ml.__file__, file=sys.stderr)
main()
"""


class FakeWorkspace:
    """The Jobs API 2.2 behind DatabricksHook._do_api_call: runs/submit runs the python_wheel_task locally."""

    def __init__(self, root: Path, wheels: dict[str, Path], secrets: dict[str, str]) -> None:
        self.root, self.wheels, self.secrets = root, wheels, secrets
        self.runs: dict[int, dict] = {}
        self.outputs: dict[int, dict] = {}
        self.processes: list[subprocess.CompletedProcess] = []
        self.calls: list[tuple[str, str]] = []
        self.ids = itertools.count(1001, 2)

    def _resolve(self, value: str) -> str:
        if value.startswith("{{secrets/") and value.endswith("}}"):
            return self.secrets[value[len("{{secrets/"):-2]]
        return str(self.root / value[1:]) if value.startswith("/tmp/") else value

    def __call__(self, endpoint_info, json=None, wrap_http_errors=True):  # set on the class: not bound
        self.calls.append(endpoint_info)
        method, endpoint = endpoint_info
        if (method, endpoint) == ("POST", "2.2/jobs/runs/submit"):
            return {"run_id": self._submit(json)}
        if (method, endpoint) == ("GET", "2.2/jobs/runs/get"):
            return json_copy(self.runs[int(json["run_id"])])
        if (method, endpoint) == ("GET", "2.2/jobs/runs/get-output"):
            return json_copy(self.outputs[int(json["run_id"])])
        raise AssertionError(f"unexpected Databricks API call {endpoint_info}")

    def _submit(self, body: dict) -> int:
        (task,) = [jobs.SubmitTask.from_dict(t) for t in body["tasks"]]
        run_id = next(self.ids)
        env = {name: self._resolve(value) for name, value in task.new_cluster.spark_env_vars.items()}
        env |= {"PATH": os.environ["PATH"], "HOME": str(self.root), "NO_PROXY": "127.0.0.1,localhost"}
        Path(env["CT_HOME"]).mkdir(parents=True, exist_ok=True)
        (wheel,) = [self.wheels[lib.whl] for lib in task.libraries if lib.whl]
        wheel_task = task.python_wheel_task
        process = subprocess.run([sys.executable, "-c", LAUNCHER, str(wheel), wheel_task.package_name,
                                  wheel_task.entry_point, *wheel_task.parameters],
                                 env=env, cwd=self.root, capture_output=True, text=True, timeout=300)
        self.processes.append(process)
        result = "SUCCESS" if process.returncode == 0 else "FAILED"
        message = "" if result == "SUCCESS" else "Workload failed, see run output for details"
        state = {"life_cycle_state": "TERMINATED", "result_state": result, "state_message": message,
                 "user_cancelled_or_timedout": False}
        self.runs[run_id] = {
            "job_id": 889, "run_id": run_id, "number_in_job": run_id, "original_attempt_run_id": run_id,
            "creator_user_name": "airflow@example.com", "run_name": body["run_name"], "run_type": "SUBMIT_RUN",
            "state": state, "start_time": 1772323200000, "setup_duration": 0,
            "execution_duration": 1000, "cleanup_duration": 0, "end_time": 1772323201000,
            "run_page_url": f"https://dbc-fake.cloud.databricks.com/?o=1234#job/889/run/{run_id}",
            "tasks": [{"run_id": run_id + 1, "task_key": task.task_key, "state": state, "attempt_number": 0,
                       "new_cluster": task.new_cluster.as_dict(), "python_wheel_task": wheel_task.as_dict(),
                       "libraries": [lib.as_dict() for lib in task.libraries]}],
        }
        if result == "FAILED":
            self.outputs[run_id + 1] = {"error": f"SystemExit: {process.returncode}",
                                        "error_trace": process.stderr[-2000:],
                                        "metadata": self.runs[run_id]["tasks"][0]}
        return run_id


def json_copy(doc: dict) -> dict:
    return json.loads(json.dumps(doc))


@pytest.fixture
def workspace(module_ct_home, tmp_path, wheel, monkeypatch):
    from ml.tracking import tracking_uri

    fake = FakeWorkspace(tmp_path / "cluster", {WHEEL_PATH: wheel}, {"ct/mlflow-tracking-uri": tracking_uri()})
    fake.root.mkdir()
    monkeypatch.setattr(DatabricksHook, "_do_api_call", fake)
    return fake


def _checked_run(config_path: Path, run_key: str) -> None:
    """The steps before training, in this process (what the DAG's check group does)."""
    from ml.pipeline import run_step
    from ml.tracking import open_run

    ctx = open_run(load_config(config_path), run_key)
    run_step("validate", ctx, dag_id="retraining", dag_run_id=run_key)
    run_step("drift", ctx)
    run_step("performance", ctx)
    assert run_step("decide", ctx, force_retrain=True).result.decision == "retrain"


def test_training_runs_from_the_wheel_as_a_databricks_job(workspace, tmp_path):
    # The "cluster" reads this very file through training.databricks.config_path (a Volume in real life).
    path = tmp_path / "config" / "model.yaml"
    path = databricks_config(tmp_path / "config", config_path=str(path), requirements=None)
    _checked_run(path, "manual__databricks")
    op = DatabricksTrainOperator(task_id="train_databricks", config_path=str(path), run_key="manual__databricks",
                                 polling_period_seconds=1)
    ti = TI()
    summary = op.execute({"ti": ti})

    (process,) = workspace.processes
    assert process.returncode == 0, process.stderr[-3000:]
    assert ".whl/ml/__init__.py" in process.stderr  # the code ran from the wheel, not from this checkout
    printed = json.loads(process.stdout)
    assert printed["run_key"] == "manual__databricks" and printed["model_uri"].startswith("models:/")
    assert summary["run_key"] == "manual__databricks"
    assert summary["model_id"] == printed["model_id"] and summary["onnx_sha256"] == printed["onnx_sha256"]
    assert summary["metrics"]["roc_auc"] > 0.5 and summary["train_rows"] > 0
    assert workspace.calls[0] == ("POST", "2.2/jobs/runs/submit")
    run = workspace.runs[1001]  # the fake answers in the API's own shape
    assert jobs.Run.from_dict(run).as_dict() == run
    assert ti.xcom["run_id"] == 1001 and "job/889/run/1001" in ti.xcom["run_page_url"]
    # The step ran on the "cluster": its scratch space, not this worker's, holds the run folder.
    assert list((workspace.root / "tmp" / "ct" / "runs").iterdir())

    from ml.pipeline import run_step
    from ml.tracking import open_run

    # The worker's next step finds the challenger in MLflow, as after a real job run.
    gates = run_step("gates", open_run(load_config(path), "manual__databricks")).result
    assert gates.passed and gates.gates["onnx_parity"].passed


def test_a_job_that_fails_before_the_step_is_left_to_retries(workspace, tmp_path):
    path = databricks_config(tmp_path / "config", config_path="/Volumes/ml/ct/configs/missing.yaml")
    op = DatabricksTrainOperator(task_id="train_databricks", config_path=str(path), run_key="manual__missing",
                                 polling_period_seconds=1)
    with pytest.raises(AirflowException, match=r"SystemExit: 2") as raised:
        op.execute({"ti": TI()})
    assert not isinstance(raised.value, AirflowFailException)  # a retry may help (e.g. the Volume was not ready)
    assert "config file /Volumes/ml/ct/configs/missing.yaml not found" in workspace.processes[0].stderr

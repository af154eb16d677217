"""The whole run, step by step, at growing window sizes: time and peak memory of every step as users run
it (`python -m ml <step>`, one process per step, as an Airflow task or a pod would), and of `ml run`.

    .venv/bin/python -m benchmarks.run_bench [--rows 10000 100000 1000000] [--out FILE] [--dag]

For each size the demo's generator (ml.datasets.attrition) writes a reference and a covariate-drifted,
labelled current window of that many rows (Parquet) into a scratch folder, with a private CT_HOME (local
MLflow store). Then:

1. bootstrap: `python -m ml run --force-retrain` (no champion yet; trains, gates, registers, serves v1);
2. the measured run on the drifted window, one process per step: validate-data, drift, drift-report,
   performance, decide, train, gates, register, deploy, promote, record (decide forces a retrain so every
   step runs);
   each step's wall time and peak RSS (os.wait4), next to the step function's own time from the run
   record (`timings`): the difference is process start-up, imports and MLflow set-up;
3. `python -m ml run` on the same window, whole, for its total and peak memory;
4. with --dag, the same run under `airflow dags test` for Airflow's share of the wall time.

Prints one table per size and writes JSON. The model server it starts on 127.0.0.1 is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STEPS = ("validate-data", "drift", "drift-report", "performance", "decide", "train", "gates", "register", "deploy",
         "promote", "record")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(folder: Path, rows: int) -> Path:
    """Reference and current windows of `rows` rows and a config pointing at them. The windows are generated
    in a child process: a child started from a process holding them would begin its peak RSS at that size."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", "import sys; from ml.datasets.attrition import generate; "
                    "generate('reference', int(sys.argv[2]), 42).to_parquet(sys.argv[1] + '/reference.parquet', "
                    "index=False); generate('covariate_drift', int(sys.argv[2]), 43).to_parquet(sys.argv[1] + "
                    "'/current.parquet', index=False)", str(folder), str(rows)], cwd=REPO, check=True)
    return demo_config(folder / "model.yaml", folder / "reference.parquet", folder / "current.parquet")


def demo_config(path: Path, reference: Path, current: Path) -> Path:
    """The demo model's config at `path`, reading these windows and serving on a free loopback port."""
    raw = yaml.safe_load((REPO / "configs" / "employee-attrition.yaml").read_text())
    raw["data"] = {"reference": str(reference), "current": str(current)}
    raw["deploy"] = {**raw["deploy"], "port": free_port()}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit code) of one command (its own rusage, children included)."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def run_size(rows: int, scratch: Path, dag: bool) -> dict[str, object]:
    config = prepare(scratch / f"rows-{rows}", rows)
    env = {**os.environ, "CT_HOME": str(scratch / f"ct-{rows}"), "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    ml = [sys.executable, "-m", "ml"]
    timed([*ml, "run", "--config", str(config), "--force-retrain", "--run-key", f"bootstrap-{rows}"], env)
    steps = {}
    key = f"measured-{rows}"
    for step in STEPS:
        extra = ["--force-retrain"] if step == "decide" else []
        seconds, peak, code = timed([*ml, step, "--config", str(config), "--run-key", key, *extra], env)
        steps[step] = {"seconds": round(seconds, 2), "peak_mb": round(peak), "exit": code}
    record = json.loads(next((scratch / f"ct-{rows}" / "runs").rglob(f"measured-{rows}*/run_record.json"))
                        .read_text())
    for step, seconds in record.get("timings", {}).items():
        name = {"validate": "validate-data"}.get(step, step.replace("_", "-"))  # the step's CLI command
        steps[name]["step_seconds"] = seconds
    whole = timed([*ml, "run", "--config", str(config), "--force-retrain", "--run-key", f"whole-{rows}"], env)
    result: dict[str, object] = {"rows": rows, "steps": steps, "status": record["status"],
                                 "run": {"seconds": round(whole[0], 2), "peak_mb": round(whole[1]), "exit": whole[2]}}
    if dag:
        result["dag"] = dag_share(config, env)
    subprocess.run([*ml, "status", "--config", str(config)], env=env, cwd=REPO, capture_output=True)
    subprocess.run([sys.executable, "-c", "import sys, yaml; from ml.config import load_config; "
                    "from ml.deploy.local import stop_server; stop_server(load_config(sys.argv[1]).name)",
                    str(config)], env=env, cwd=REPO, capture_output=True)
    return result


def dag_share(config: Path, env: dict[str, str]) -> dict[str, float]:
    """Wall time of the same run under `airflow dags test` vs the step functions' own time."""
    home = Path(env["CT_HOME"]) / "airflow"
    # the DAG files make one `<name>.retrain` DAG per config in CT_CONFIG_DIR: the folder holding only this one
    airflow_env = {**env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                   "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                   "CT_CONFIG_DIR": str(config.parent)}
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=airflow_env, capture_output=True, check=True)
    dag_id = f"{yaml.safe_load(config.read_text())['name']}.retrain"
    seconds, _, code = timed([airflow, "dags", "test", dag_id, "--conf", json.dumps({"force_retrain": True})],
                             airflow_env)
    if code != 0:
        raise SystemExit(f"`airflow dags test {dag_id}` failed with exit code {code}")
    records = sorted((Path(env["CT_HOME"]) / "runs").rglob("run_record.json"), key=lambda p: p.stat().st_mtime)
    steps = sum(json.loads(records[-1].read_text()).get("timings", {}).values())
    return {"seconds": round(seconds, 2), "step_seconds": round(steps, 2),
            "airflow_share": round(1 - steps / seconds, 3), "exit": code}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dag", action="store_true", help="also time the run under `airflow dags test`")
    parser.add_argument("--out", default="benchmarks/results/run.json")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="ct-run-bench-") as tmp:
        for rows in args.rows:
            result = run_size(rows, Path(tmp), args.dag)
            results.append(result)
            print(f"\n{rows:,} rows per window (status {result['status']})\n")
            print("| step | wall s | of which the step s | peak RSS MB |\n|---|---|---|---|")
            for step, m in result["steps"].items():
                print(f"| {step} | {m['seconds']:.2f} | {m.get('step_seconds', '-')} | {m['peak_mb']} |")
            run = result["run"]
            print(f"| `ml run` (whole, one process) | {run['seconds']:.2f} | | {run['peak_mb']} |")
            if "dag" in result:
                d = result["dag"]
                print(f"| `airflow dags test` | {d['seconds']:.2f} | {d['step_seconds']} | Airflow's share "
                      f"{d['airflow_share']:.0%} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

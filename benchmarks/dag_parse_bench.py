"""How long Airflow takes to parse the DAG files for N model configs (`<name>.retrain` + `<name>.rollback` each).

    .venv/bin/python -m benchmarks.dag_parse_bench [--models 1 10 50] [--repeat 3]

For each N it writes N copies of the demo config (distinct names and ports) into a temporary config folder,
then, in a fresh interpreter per measurement (as the dag-processor parses), imports Airflow and times
`DagBag(dags/)` alone: the cost the DAG files add on top of Airflow's own import. It prints a markdown
table (N, DAGs, best and median seconds) and the load average, which inflates the numbers when other
jobs share the CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

#: what each generated config makes: <name>.retrain, <name>.rollback, <name>.monitor (no batch input, no canary)
DAGS_PER_MODEL = 3

REPO = Path(__file__).resolve().parents[1]
CODE = """
import json, sys, time
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "dags": len(bag.dag_ids), "errors": len(bag.import_errors)}))
"""


def write_configs(folder: Path, n: int) -> None:
    demo = yaml.safe_load((REPO / "configs" / "employee-attrition.yaml").read_text())
    demo["data"] = {k: str((REPO / "configs" / v).resolve()) for k, v in demo["data"].items()}
    for i in range(n):
        config = {**demo, "name": f"model-{i:03d}", "deploy": {**demo["deploy"], "port": 20000 + i}}
        (folder / f"model-{i:03d}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def measure(folder: Path) -> dict:
    env = {**os.environ, "CT_CONFIG_DIR": str(folder), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    env.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="ct-bench-airflow-"))
    out = subprocess.run([sys.executable, "-c", CODE, str(REPO / "dags")], capture_output=True, text=True,
                         env=env, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| models | DAGs | best (s) | median (s) |\n|---|---|---|---|")
    for n in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            write_configs(Path(tmp), n)
            runs = [measure(Path(tmp)) for _ in range(args.repeat)]
        assert all(r["errors"] == 0 and r["dags"] == DAGS_PER_MODEL * n for r in runs), runs
        seconds = [r["seconds"] for r in runs]
        print(f"| {n} | {DAGS_PER_MODEL * n} | {min(seconds):.2f} | {statistics.median(seconds):.2f} |")


if __name__ == "__main__":
    main()

"""The train step at three sizes: time, peak memory and ONNX size per estimator, `auto` included.

    .venv/bin/python -m benchmarks.train_bench [--rows 10000 100000 170000] [--json train_bench.json]

(run from the repository root.) For each size it generates the demo's attrition data
(`ml.datasets.attrition`, reference scenario, 8 numeric + 1 categorical feature) with enough rows that
the training split has exactly that many (30% is the holdout), and for each estimator runs the real
`validate` and `train` steps (ml.pipeline.run_step: fit, ONNX export, MLflow logging into a throw-away
local store) in a fresh process, so each peak RSS is that case's alone. Estimators: logistic_regression,
random_forest and lightgbm with their defaults (tree bounds of ml.estimators applied), `auto` (the
search with its default budget), and at the largest size a random forest with the bounds switched off
(`max_leaf_nodes: null, max_samples: null`, what random_forest trained before the bounds): the early
estimate refuses it before it is trained to the end.

Columns: train step wall time; peak RSS of the step's process (imports, validate and train); ONNX size
and whether it passes the default 50 MB size gate; holdout ROC AUC; for auto, the chosen candidate.
It prints a markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MODELS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"estimator": "logistic_regression"},
    "random_forest": {"estimator": "random_forest"},
    "lightgbm": {"estimator": "lightgbm"},
    "auto": {"estimator": "auto"},
}
UNBOUNDED = {"estimator": "random_forest", "params": {"max_leaf_nodes": None, "max_samples": None}}


def write_case(folder: Path, data: Path, model: dict[str, Any]) -> Path:
    """A config like the demo's (same features and gates) on the generated reference window only."""
    raw = yaml.safe_load((REPO / "configs" / "employee-attrition.yaml").read_text())
    raw.update(data={"reference": str(data)}, model=model, name="train-bench")
    raw["contract"].pop("columns", None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / "model.yaml"


def child(config_path: str) -> dict[str, Any]:
    """validate + train in this process (a fresh CT_HOME); the train step timed."""
    import resource
    import time

    from ml.config import load_config
    from ml.errors import TrainingError
    from ml.gates import size_gate
    from ml.pipeline import run_step
    from ml.state import RunState, Step
    from ml.tracking import open_run

    config = load_config(config_path)
    ctx = open_run(config, "bench")
    state = RunState.load(ctx).with_record(run_step(Step.VALIDATE, ctx))
    started = time.perf_counter()
    try:
        trained = run_step(Step.TRAIN, ctx, state=state).result
    except TrainingError as exc:
        return {"seconds": time.perf_counter() - started, "error": str(exc),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    seconds = time.perf_counter() - started
    search = trained.search
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "estimator": trained.estimator, "train_rows": trained.train_rows, "params": trained.params,
            "onnx_mb": trained.onnx_size_bytes / 1e6,
            "size_gate": size_gate(trained.onnx_size_bytes, config.gates.max_size_mb).passed,
            "roc_auc": trained.metrics["roc_auc"], "chosen": search.chosen if search else None,
            "search_s": search.elapsed_s if search else None,
            "candidates": [c.to_dict() for c in search.candidates] if search else None}


def run_case(config_path: Path, home: Path) -> dict[str, Any]:
    env = {**os.environ, "CT_HOME": str(home), "PYTHONPATH": str(REPO), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_bench", "--child", str(config_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{config_path}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| training rows | model | train step (s) | peak RSS (MB) | ONNX (MB) | size gate | ROC AUC "
             "| auto chose |",
             "| ---: | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['rows']:,} | {r['model']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | - | "
                         f"refused before the end: {r['error'][:90]}... | - | - |")
            continue
        chosen = f"{r['chosen']} (search {r['search_s']:.0f} s)" if r["chosen"] else ""
        lines.append(f"| {r['rows']:,} | {r['model']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['onnx_mb']:.3f} | {'pass' if r['size_gate'] else 'FAIL'} | {r['roc_auc']:.4f} | {chosen} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 170_000],
                        help="training rows per size (default 10000 100000 170000)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--json", type=Path, default=Path("train_bench.json"), help="where to write the numbers")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child), default=str))
        return 0
    from ml.datasets.attrition import generate

    results, load = [], os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ct-train-bench-") as tmp:
        for rows in args.rows:
            data = Path(tmp) / f"reference-{rows}.parquet"
            generate("reference", math.ceil(rows / 0.7), seed=7).to_parquet(data, index=False)
            cases = [(name, MODELS[name]) for name in args.models]
            if rows == max(args.rows):
                cases.append(("random_forest, bounds off", UNBOUNDED))
            for name, model in cases:
                case = Path(tmp) / f"{rows}-{name.replace(', ', '-')}"
                result = {"rows": rows, "model": name, **run_case(write_case(case, data, model), case / "ct")}
                print(f"{rows} {name}: {result['seconds']:.1f} s", file=sys.stderr, flush=True)
                results.append(result)
    print(table(results))
    print(f"\nload average before / after: {load[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    args.json.write_text(json.dumps({"machine": machine(), "load_before": load, "results": results}, indent=2,
                                    default=str))
    return 0


def machine() -> dict[str, Any]:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()}


if __name__ == "__main__":
    sys.exit(main())

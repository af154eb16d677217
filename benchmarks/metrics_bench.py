"""Micro-benchmark of the server's metrics: the cost of recording one request, and of one scrape.

    .venv/bin/python -m benchmarks.metrics_bench [--n 1000000]

(run from the repository root.) Measures `Metrics.observe` (what the middleware calls once per
request), `count_prediction` and `render` (one /metrics scrape), first with one worker's in-memory
registry, then in prometheus_client's multiprocess mode (a child process started with
PROMETHEUS_MULTIPROC_DIR set to a temporary folder, as `python -m ml.serving` does for its workers).
Best of 5 repeats; the timings include the call through a lambda (about 50 ns).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(n: int) -> dict[str, float]:
    """Nanoseconds per call (render: microseconds) in this process's prometheus_client mode."""
    from ml.serving.metrics import Metrics

    metrics = Metrics({"name": "m", "version": "1", "sha256": "ab"})
    out = {}
    for label, call in (("observe", lambda: metrics.observe("/predict", 200, 0.0012)),
                        ("count_prediction", lambda: metrics.count_prediction("1"))):
        out[label + " ns"] = min(timeit.repeat(call, number=n, repeat=5)) / n * 1e9
    out["render us"] = min(timeit.repeat(metrics.render, number=200, repeat=3)) / 200 * 1e6
    out["multiprocess"] = float(metrics.metrics_dir is not None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="calls per repeat (default 1000000)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.n)))
        return 0
    rows = {"one worker (CollectorRegistry)": measure(args.n)}
    folder = tempfile.mkdtemp(prefix="ct-metrics-bench-")
    try:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder, "PYTHONPATH": str(REPO)}
        child = subprocess.run([sys.executable, "-m", "benchmarks.metrics_bench", "--child", "--n", str(args.n)],
                               cwd=REPO, env=env, check=True, capture_output=True, text=True)
        rows["several workers (multiprocess mode)"] = json.loads(child.stdout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("| mode | observe (ns) | count_prediction (ns) | render (µs) |")
    print("| --- | ---: | ---: | ---: |")
    for mode, row in rows.items():
        print(f"| {mode} | {row['observe ns']:.0f} | {row['count_prediction ns']:.0f} | {row['render us']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

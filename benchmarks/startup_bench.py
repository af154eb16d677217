"""Start-up: every step of a run on the demo data as its own process (`python -m ml <step>`, as an Airflow task
or a pod runs it), where nearly all of the time is starting Python, importing and opening the MLflow run.

    .venv/bin/python -m benchmarks.startup_bench [--rounds 5] [--baseline PATH] [--out FILE]

A private CT_HOME (local SQLite MLflow store, as `make demo`) gets a champion first (`python -m ml run` on the
demo data; its server keeps running, as validate-data would restore it, and is stopped at the end); then each
round runs validate-data, drift, drift-report, performance, decide and record of a new run on the covariate-drift
window, timing each command's wall clock. With `--baseline PATH` (another checkout of this repository, e.g. a `git
worktree` of an older commit, run with this interpreter) the two are timed in interleaved rounds, each with its
own CT_HOME, so the machine's load hits both alike; a step the baseline does not have is shown as "-". Then
`python -X importtime` of one `decide` per checkout, summed by top-level package: where the start-up goes. Prints
tables (medians) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run_bench import REPO, demo_config

STEPS = ("validate-data", "drift", "drift-report", "performance", "decide", "record")


class Checkout:
    """One checkout to time: its source, its own CT_HOME and config (demo data, a free port)."""

    def __init__(self, name: str, repo: Path, scratch: Path) -> None:
        self.name, self.repo = name, repo
        self.home = scratch / f"ct-{name}"
        data = REPO / "data" / "attrition"
        self.config = demo_config(scratch / f"{name}.yaml", data / "reference.csv",
                                  data / "current_covariate_drift.csv")
        self.env = {**os.environ, "CT_HOME": str(self.home), "PYTHONPATH": f"{repo}:{repo / 'plugins'}"}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.times: dict[str, list[float]] = {step: [] for step in STEPS}

    def ml(self, *args: str, check: bool = True) -> tuple[float, int]:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ml", *args, "--config", str(self.config)], env=self.env,
                              cwd=self.repo, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if check and done.returncode != 0:
            raise SystemExit(f"{self.name}: python -m ml {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        return seconds, done.returncode

    def bootstrap(self) -> None:
        self.ml("run", "--run-key", "bootstrap")

    def stop_serving(self) -> None:
        """The champion's server: `ml run` started it, and each validate-data restores it if it is gone."""
        subprocess.run([sys.executable, "-c", "from ml.deploy.local import stop_server; "
                        "stop_server('employee-attrition')"], env=self.env, cwd=self.repo, capture_output=True)

    def round(self, key: str) -> None:
        for step in STEPS:
            seconds, code = self.ml(step, "--run-key", key, check=False)
            if code == 2 and step == "drift-report":  # a checkout from before the report was a step
                continue
            if code != 0:
                raise SystemExit(f"{self.name}: python -m ml {step} exited {code}")
            self.times[step].append(seconds)

    def imports(self, key: str) -> dict[str, float]:
        """Seconds of `python -X importtime -m ml decide` (run `key` decided again), by top-level package."""
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ml", "decide", "--config",
                               str(self.config), "--run-key", key], env=self.env, cwd=self.repo,
                              capture_output=True, text=True)
        totals: dict[str, float] = {}
        for line in done.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            _, cumulative, name = (part for part in line[len("import time:"):].split("|"))
            if name.startswith(" ") and not name.startswith("  ") and cumulative.strip().isdigit():
                top = name.strip().split(".")[0]
                totals[top] = totals.get(top, 0.0) + int(cumulative) / 1e6
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout to time side by side")
    parser.add_argument("--out", default="benchmarks/results/startup.json")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ct-startup-bench-") as tmp:
        checkouts = [Checkout("ours", REPO, Path(tmp))]
        if args.baseline:
            checkouts.insert(0, Checkout("baseline", args.baseline.resolve(), Path(tmp)))
        try:
            for checkout in checkouts:
                checkout.bootstrap()
            for i in range(args.rounds):
                for checkout in checkouts:
                    checkout.round(f"round-{i}")
            imports = {c.name: c.imports(f"round-{args.rounds - 1}") for c in checkouts}
        finally:
            for checkout in checkouts:
                checkout.stop_serving()
    medians = {c.name: {s: round(statistics.median(t), 2) for s, t in c.times.items() if t} for c in checkouts}
    names = [c.name for c in checkouts]
    print(f"\nload average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {args.rounds} rounds, "
          "medians of wall seconds\n")
    print("| step | " + " | ".join(names) + (" | ratio |" if args.baseline else " |"))
    print("|---|" + "---|" * (len(names) + bool(args.baseline)))
    for step in STEPS:
        cells = [f"{medians[n][step]:.2f}" if step in medians[n] else "-" for n in names]
        ratio = ""
        if args.baseline and step in medians["baseline"] and step in medians["ours"]:
            ratio = f" | {medians['baseline'][step] / medians['ours'][step]:.2f}x"
        elif args.baseline:
            ratio = " | -"
        print(f"| {step} | " + " | ".join(cells) + ratio + " |")
    print("\n`python -X importtime -m ml decide`, cumulative seconds by top-level package (largest first)\n")
    for name in names:
        top = list(imports[name].items())[:6]
        print(f"- {name}: total {sum(imports[name].values()):.2f} s; "
              + ", ".join(f"{pkg} {s:.2f}" for pkg, s in top))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load_average": load, "rounds": args.rounds, "medians": medians,
                               "times": {c.name: c.times for c in checkouts}, "imports": imports}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

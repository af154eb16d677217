"""Side by side: this project's server vs `mlflow models serve` vs plain FastAPI + scikit-learn, same model.

    .venv/bin/python -m benchmarks.serving_compare [--rounds 3] [--duration 5] [--rate 150] [--workers 2]
        [--json benchmarks/results/serving_compare.json]

One logistic-regression pipeline trained on the synthetic attrition data (8 numeric + 1 categorical
feature) is served three ways on 127.0.0.1, each with the same number of worker processes:

* `ours`: `python -m ml.serving` on its ONNX export (prediction log on, as in production);
* `mlflow`: `mlflow models serve --env-manager local` on the pipeline saved with `mlflow.sklearn`
  (POST /invocations with `dataframe_records`);
* `plain`: benchmarks/plain_sklearn_app.py under uvicorn (the pipeline's `predict_proba` per request).

The rounds are interleaved (round 1: ours, mlflow, plain; round 2: the same...), so a change in the
machine's load hits all three alike. Per round and server: (1) max single-row throughput, `wrk -t1` over
32 keep-alive connections (the asyncio client of serving_bench without wrk); (2) latency at a fixed rate
(`--rate`, open loop, measured from each request's scheduled start). The table shows the median over the
rounds and the ratio ours / the other. About 3 x rounds x (duration + 10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.serving_bench import (
    REPO,
    closed_loop,
    free_port,
    machine,
    open_loop,
    request_bytes,
    run_async,
    start_server,
    train_model,
    wrk_throughput,
)

SERVERS = ("ours", "mlflow", "plain")


def _wait_ready(proc: subprocess.Popen, probe: Callable[[], bool], log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready within {timeout_s:.0f} s:\n{log.read_text()[-2000:]}")


def _post_ok(url: str, body: bytes) -> bool:
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status == 200


def start_all(tmp: Path, workers: int, procs: list[subprocess.Popen]) -> dict[str, dict[str, Any]]:
    """Train the model, start the three servers (each process appended to `procs` as it starts, so the
    caller stops them even when a later one fails); {name: {port, path, body}}."""
    import joblib
    import mlflow.sklearn

    model, sha, pipeline, config, records = train_model(tmp)
    record = records[0]
    joblib.dump(pipeline, tmp / "pipeline.joblib")
    mlflow.sklearn.save_model(pipeline, str(tmp / "mlflow-model"),
                              serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CT_", "MLFLOW_"))}
    servers = {name: {"port": free_port()} for name in SERVERS}
    procs.append(start_server(model, sha, servers["ours"]["port"], workers, tmp / "predictions", tmp / "ours.log"))
    servers["ours"] |= {"path": "/predict", "body": json.dumps(record).encode()}
    servers["mlflow"] |= {"path": "/invocations", "body": json.dumps({"dataframe_records": [record]}).encode()}
    servers["plain"] |= {"path": "/predict", "body": json.dumps(record).encode()}
    bin_dir = Path(sys.executable).parent
    commands = {
        "mlflow": [str(bin_dir / "mlflow"), "models", "serve", "-m", str(tmp / "mlflow-model"), "--env-manager",
                   "local", "-h", "127.0.0.1", "-p", str(servers["mlflow"]["port"]), "-w", str(workers)],
        "plain": [str(bin_dir / "uvicorn"), "benchmarks.plain_sklearn_app:app", "--host", "127.0.0.1", "--port",
                  str(servers["plain"]["port"]), "--workers", str(workers), "--no-access-log", "--log-level",
                  "warning"],
    }
    for name, cmd in commands.items():
        log = tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    env={**env, "CT_BENCH_PIPELINE": str(tmp / "pipeline.joblib"),
                                         "PYTHONPATH": str(REPO),  # mlflow execs `uvicorn` from PATH
                                         "PATH": os.pathsep.join([str(bin_dir), env.get("PATH", "")])})
        procs.append(proc)
        server = servers[name]
        url = f"http://127.0.0.1:{server['port']}{server['path']}"
        _wait_ready(proc, lambda url=url, body=server["body"]: _post_ok(url, body), log)
    return servers


def measure(server: dict[str, Any], duration: float, rate: float, tmp: Path) -> dict[str, Any]:
    """Max throughput, then latency at `rate`, of one server."""
    port, path, body = server["port"], server["path"], server["body"]
    if shutil.which("wrk"):
        peak = wrk_throughput(port, body, 32, duration, 1, tmp, path=path)
    else:
        peak = run_async(closed_loop(port, [request_bytes(port, body, path)], 32, duration))
    fixed = run_async(open_loop(port, [request_bytes(port, body, path)], rate, duration))
    return {"rps": peak["rps"], "errors": peak["errors"], "fixed": fixed}


def median(rounds: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(key(r) for r in rounds)


def table(results: dict[str, Any]) -> str:
    rows = ["| measure (median of the rounds) | ours | `mlflow models serve` | plain FastAPI + sklearn | ours / mlflow "
            "| ours / plain |", "|---|---|---|---|---|---|"]
    summary = results["summary"]

    def line(label: str, key: str, fmt: str, better_high: bool) -> str:
        ours, mlf, plain = (summary[name][key] for name in SERVERS)
        ratio = (lambda other: ours / other) if better_high else (lambda other: other / ours)
        return (f"| {label} | {fmt.format(ours)} | {fmt.format(mlf)} | {fmt.format(plain)} | "
                f"x{ratio(mlf):.0f} | x{ratio(plain):.0f} |")

    rows.append(line("max single-row throughput (req/s)", "rps", "{:,.0f}", True))
    rows.append(line(f"p50 at {results['rate']:.0f} req/s (ms)", "p50_ms", "{:.2f}", False))
    rows.append(line(f"p99 at {results['rate']:.0f} req/s (ms)", "p99_ms", "{:.2f}", False))
    errors = {name: summary[name]["errors"] for name in SERVERS}
    return "\n".join(rows) + f"\n\nerrors (all rounds): {errors}; machine: {results['machine']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--rate", type=float, default=150.0, help="fixed request rate of the latency runs")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each server")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/serving_compare.json"))
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ct-serving-compare-"))
    info = machine()
    procs: list[subprocess.Popen] = []
    try:
        servers = start_all(tmp, args.workers, procs)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
        for number in range(1, args.rounds + 1):
            for name in SERVERS:
                rounds[name].append(measure(servers[name], args.duration, args.rate, tmp))
                print(f"round {number} {name}: {rounds[name][-1]['rps']:,.0f} req/s, p99 at {args.rate:.0f} "
                      f"req/s {rounds[name][-1]['fixed']['p99_ms']:.2f} ms", file=sys.stderr)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {name: {"rps": median(r, lambda x: x["rps"]), "p50_ms": median(r, lambda x: x["fixed"]["p50_ms"]),
                      "p99_ms": median(r, lambda x: x["fixed"]["p99_ms"]),
                      "errors": sum(x["errors"] + x["fixed"]["errors"] for x in r)} for name, r in rounds.items()}
    results = {"machine": info, "rate": args.rate, "workers": args.workers, "duration_s": args.duration,
               "rounds": rounds, "summary": summary}
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

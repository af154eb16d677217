"""Serving benchmark: throughput and latency of the real server on loopback, and ONNX vs sklearn in-process.

    .venv/bin/python -m benchmarks.serving_bench [--workers 2] [--connections 32] [--duration 10] [--json out.json]
        [--variant none|shadow|canary]

(run from the repository root, so `ml` is importable.)

Setup: trains a small model on the synthetic attrition data (8 numeric + 1 categorical feature),
exports it to ONNX and starts `python -m ml.serving` on 127.0.0.1 (a free port, 2 workers, prediction
logging ON, as in production). Then, numbered as in the printed table:

1. Max throughput: single-row POST /predict at a fixed number of keep-alive connections (closed
   loop), with `wrk` when installed (`apt-get install wrk`), else with the asyncio client below.
2. Latency at half that rate: an open-loop asyncio client sends requests on a fixed schedule
   (rate R) over a pool of keep-alive connections and measures each latency from the request's
   *scheduled* start, so queueing behind a slow response counts (no coordinated omission). Plain
   wrk cannot hold a fixed rate (wrk2 is not packaged by Debian), hence this client.
   2b. The same at half the acceptance target (--target-rps, default 3000; 0 skips it).
3. In-process single-row latency: onnxruntime on the feed dict vs the sklearn pipeline's
   predict_proba on a one-row DataFrame (same model).

Only 127.0.0.1 traffic; bounded runtime (about 50 s with the defaults). Prints a table (and JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("serving_bench")


# ---- model and server ----------------------------------------------------------------------------

def train_model(out_dir: Path) -> tuple[Path, str, Any, Any, list[dict[str, Any]]]:
    """(onnx path, sha256, sklearn pipeline, config, sample records) of a freshly trained model."""
    from ml.challenger import fit_challenger
    from ml.config import parse_config
    from ml.datasets.attrition import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES, generate
    from ml.export import sha256_bytes, to_onnx

    reference = generate("reference", 2000, 42)
    config = parse_config({"name": "bench-attrition", "target": LABEL, "positive_class": 1,
                           "features": {"numeric": list(NUMERIC_FEATURES), "categorical": list(CATEGORICAL_FEATURES)},
                           "data": {"reference": "reference.csv"}})
    challenger = fit_challenger(config, reference, None)
    data = to_onnx(challenger.pipeline, config, challenger.data.classes)
    path = out_dir / "model.onnx"
    path.write_bytes(data)
    sample = generate("no_drift", 256, 43)
    records = [{c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in config.feature_columns}
               for _, row in sample.iterrows()]
    return path, sha256_bytes(data), challenger.pipeline, config, records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, sha: str, port: int, workers: int, log_dir: Path | None,
                 out: Path, variant: str = "none") -> subprocess.Popen:
    """The server; `variant` shadow / canary serves the same file a second time in that role (its cost)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CT_")}
    env |= {"CT_MODEL_URI": str(model), "CT_MODEL_SHA256": sha, "CT_MODEL_VERSION": "bench",
            "CT_HOST": "127.0.0.1", "CT_PORT": str(port), "CT_WORKERS": str(workers),
            "CT_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
    if log_dir is not None:
        env["CT_PREDICTION_LOG_DIR"] = str(log_dir)
    if variant != "none":
        env |= {f"CT_{variant.upper()}_MODEL_PATH": str(model), f"CT_{variant.upper()}_MODEL_SHA256": sha,
                f"CT_{variant.upper()}_MODEL_VERSION": variant}
        env |= {"CT_CANARY_FRACTION": "0.5"} if variant == "canary" else {}
    with out.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ml.serving"], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server not ready within 60 s")


# ---- a minimal keep-alive HTTP/1.1 client (asyncio) ----------------------------------------------

def request_bytes(port: int, body: bytes, path: str = "/predict") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> int:
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    await reader.readexactly(int(match.group(1)) if match else 0)
    return status


async def closed_loop(port: int, payloads: list[bytes], connections: int, duration: float) -> dict[str, Any]:
    """Each connection sends its next request as soon as the previous answer arrived."""
    stop = time.perf_counter() + duration
    latencies: list[float] = []
    errors = 0

    async def worker(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            status = await _exchange(reader, writer, payloads[i % len(payloads)])
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
            i += connections
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "errors": errors,
            **_quantiles(latencies)}


async def open_loop(port: int, payloads: list[bytes], rate: float, duration: float,
                    connections: int = 64) -> dict[str, Any]:
    """Requests start on a fixed schedule (i / rate); latency is measured from the scheduled start."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, payload: bytes) -> None:
        nonlocal errors
        conn = await pool.get()
        try:
            status = await _exchange(*conn, payload)
        finally:
            pool.put_nowait(conn)
        latencies.append(time.perf_counter() - scheduled)
        errors += status != 200

    total = int(rate * duration)
    start = time.perf_counter()
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(scheduled, payloads[i % len(payloads)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {"requests": total, "target_rps": rate, "rps": total / elapsed, "errors": errors,
            **_quantiles(latencies)}


def _quantiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {"p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "max_ms": ordered[-1] * 1000,
            "mean_ms": statistics.fmean(ordered) * 1000}


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ---- wrk -----------------------------------------------------------------------------------------

def wrk_throughput(port: int, body: bytes, connections: int, duration: float, threads: int,
                   tmp: Path, path: str = "/predict") -> dict[str, Any]:
    script = tmp / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(body.decode())}\n")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration)}s", "--latency", "-s", str(script),
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    result: dict[str, Any] = {"command": " ".join(cmd[:-3] + ["post.lua", cmd[-1]])}
    result["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            result[key] = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return result


# ---- in-process ----------------------------------------------------------------------------------

def in_process(model_path: Path, pipeline: Any, config: Any, records: list[dict[str, Any]],
               rounds: int = 2000) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from ml.data import model_frame
    from ml.export import OnnxModel

    model = OnnxModel.load(model_path)
    frames = [model_frame(pd.DataFrame([r]), config) for r in records[:50]]
    feeds = [{c: np.array([[r[c]]], dtype=np.float32) for c in model.numeric}
             | {c: np.array([[r[c]]], dtype=object) for c in model.categorical} for r in records[:50]]

    def timed(fn: Any, inputs: list[Any], n: int) -> list[float]:
        for x in inputs[:20]:
            fn(x)
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(inputs[i % len(inputs)])
            out.append(time.perf_counter() - t0)
        return out

    onnx_s = timed(model.predict_proba_feed, feeds, rounds)
    sklearn_s = timed(pipeline.predict_proba, frames, max(200, rounds // 4))
    onnx_q, sklearn_q = _quantiles(onnx_s), _quantiles(sklearn_s)
    return {"onnxruntime": onnx_q, "sklearn": sklearn_q,
            "ratio_p50": sklearn_q["p50_ms"] / onnx_q["p50_ms"], "ratio_p99": sklearn_q["p99_ms"] / onnx_q["p99_ms"]}


# ---- report --------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import uvicorn

    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "uvicorn": uvicorn.__version__,
            "loadavg_1m_before": os.getloadavg()[0]}


def table(results: dict[str, Any]) -> str:
    m, tp, fr, ip = results["machine"], results["throughput"], results["fixed_rate"], results["in_process"]
    rows = [
        ("machine", f"{m['nproc']} CPU(s), {m['cpu']}, Python {m['python']}, onnxruntime {m['onnxruntime']}, "
                    f"uvicorn {m['uvicorn']}"),
        ("load average before the run", f"{m['loadavg_1m_before']:.2f} (other processes compete for the CPUs "
                                        "when this is not ~0)"),
        ("server", f"{results['workers']} worker(s), prediction log {'on' if results['prediction_log'] else 'off'}"),
        ("1. max throughput", f"{tp['rps']:,.0f} req/s  ({tp['tool']}, {tp['connections']} connections, "
                              f"{tp['requests']:,} requests, {tp['errors']} errors)"),
        ("   latency under max load", f"p50 {tp.get('p50_ms', float('nan')):.2f} ms, "
                                      f"p99 {tp.get('p99_ms', float('nan')):.2f} ms"),
        ("2. fixed rate (half of 1.)", f"{fr['rps']:,.0f} req/s achieved of {fr['target_rps']:,.0f} target "
                                       f"({fr['requests']:,} requests, {fr['errors']} errors)"),
        ("   latency at that rate", f"p50 {fr['p50_ms']:.2f} ms, p90 {fr['p90_ms']:.2f} ms, "
                                    f"p99 {fr['p99_ms']:.2f} ms, max {fr['max_ms']:.2f} ms"),
        *([("2b. fixed rate (half of target)", f"{tr['rps']:,.0f} req/s achieved of {tr['target_rps']:,.0f} target "
                                                f"({tr['requests']:,} requests, {tr['errors']} errors)"),
           ("    latency at that rate", f"p50 {tr['p50_ms']:.2f} ms, p90 {tr['p90_ms']:.2f} ms, "
                                        f"p99 {tr['p99_ms']:.2f} ms, max {tr['max_ms']:.2f} ms")]
          if (tr := results.get("target_rate")) else []),
        ("3. in-process, 1 row: onnxruntime", f"p50 {ip['onnxruntime']['p50_ms'] * 1000:.0f} us, "
                                              f"p99 {ip['onnxruntime']['p99_ms'] * 1000:.0f} us"),
        ("   in-process, 1 row: sklearn", f"p50 {ip['sklearn']['p50_ms'] * 1000:.0f} us, "
                                          f"p99 {ip['sklearn']['p99_ms'] * 1000:.0f} us"),
        ("   sklearn / onnxruntime", f"{ip['ratio_p50']:.1f}x at p50, {ip['ratio_p99']:.1f}x at p99"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measure'.ljust(width)} | result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="connections for the max-throughput run")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run (max 30)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: leave CPU to the server)")
    parser.add_argument("--no-prediction-log", action="store_true", help="serve without the prediction log")
    parser.add_argument("--force-asyncio", action="store_true", help="use the asyncio client even if wrk exists")
    parser.add_argument("--target-rps", type=float, default=3000.0,
                        help="acceptance throughput; latency is also measured at half of it (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--variant", choices=["none", "shadow", "canary"], default="none",
                        help="also serve the model in shadow, or as a canary at 0.5 (default none)")
    args = parser.parse_args(argv)
    duration = min(args.duration, 30.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    results: dict[str, Any] = {"machine": machine(), "workers": args.workers,
                               "prediction_log": not args.no_prediction_log, "variant": args.variant}
    with tempfile.TemporaryDirectory(prefix="ct-serving-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log.info("training the benchmark model (synthetic attrition data, 8 numeric + 1 categorical)")
        model_path, sha, pipeline, config, records = train_model(tmp)
        payloads_json = [json.dumps(r).encode() for r in records]
        port = free_port()
        server = start_server(model_path, sha, port, args.workers,
                              None if args.no_prediction_log else tmp / "log", tmp / "server.log", args.variant)
        try:
            payloads = [request_bytes(port, b) for b in payloads_json]
            run_async(closed_loop(port, payloads, 8, 1.0))  # warm-up: connections, caches
            use_wrk = shutil.which("wrk") is not None and not args.force_asyncio
            log.info("1. max throughput with %s, %d connections, %.0f s", "wrk" if use_wrk else "asyncio client",
                     args.connections, duration)
            if use_wrk:
                throughput = wrk_throughput(port, payloads_json[0], args.connections, duration, args.wrk_threads,
                                            tmp)
                throughput["tool"] = f"wrk -t{args.wrk_threads}"
            else:
                throughput = run_async(closed_loop(port, payloads, args.connections, duration))
                throughput["tool"] = "asyncio client (wrk not installed)"
            throughput["connections"] = args.connections
            results["throughput"] = throughput
            rate = throughput["rps"] / 2
            log.info("2. open-loop fixed rate %.0f req/s for %.0f s (asyncio client, latency from scheduled start)",
                     rate, duration)
            results["fixed_rate"] = run_async(open_loop(port, payloads, rate, duration))
            results["fixed_rate"]["method"] = ("open loop: request i starts at t0 + i/rate on a pool of 64 "
                                               "keep-alive connections; latency counted from the scheduled start")
            if args.target_rps:
                log.info("2b. open-loop at half the acceptance target: %.0f req/s", args.target_rps / 2)
                results["target_rate"] = run_async(open_loop(port, payloads, args.target_rps / 2, duration))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        log.info("3. in-process single-row latency: onnxruntime vs sklearn")
        results["in_process"] = in_process(model_path, pipeline, config, records)
        server_log = (tmp / "server.log").read_text()
        if "ERROR" in server_log:
            log.warning("server log has errors:\n%s", server_log)

    sys.stdout.write(table(results) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

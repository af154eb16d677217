"""Batch-scoring benchmark: rows/s and peak memory of `ml.batch.score_batch` at growing input sizes.

    .venv/bin/python -m benchmarks.batch_bench [--rows 100000 1000000] [--chunk-rows 65536] [--no-log] [--json out.json]

(run from the repository root, so `ml` is importable.)

Setup: trains a small logistic-regression model on the synthetic attrition data (8 numeric + 1 categorical
feature, benchmarks.serving_bench.train_model) and exports it to ONNX; writes each input size as one Parquet
file (generated and written chunk by chunk, so the generator's memory does not grow with the size either).
Then each size is scored in a FRESH process (`python -m ml batch --model-uri <file> --expected-sha256 ...`),
whose peak RSS (getrusage ru_maxrss of the child) and wall time are reported: a process per size, so the
peak of one size cannot hide in another's. With logging on (the default), every row also goes to the
prediction log (`source: batch`), as in production. Bounded memory means peak RSS roughly independent of
the input size: compare the rows. The input is written in row groups of 100,000 rows: pyarrow decodes a
whole Parquet row group at a time, so the peak depends on `chunk_rows` and on the input's row-group size,
not on its number of rows (README "Monitoring and batch scoring" has the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_input(path: Path, rows: int, chunk: int = 100_000) -> None:
    """`rows` rows of the attrition 'no_drift' scenario as one Parquet file, written chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml.datasets.attrition import generate

    writer = None
    for start in range(0, rows, chunk):
        frame = generate("no_drift", min(chunk, rows - start), 1000 + start)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def score_in_child(config: Path, model: Path, sha256: str, source: Path, out: Path, log: bool) -> dict:
    """Run `python -m ml batch` in a child process; its result, wall time and peak RSS (os.wait4: this child's
    own rusage, not the running maximum over all children)."""
    cmd = [sys.executable, "-m", "ml", "batch", "--config", str(config), "--input", str(source), "--output",
           str(out), "--model-uri", str(model), "--expected-sha256", sha256, "--run-key", source.stem]
    if not log:
        cmd.append("--no-log")
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=REPO, env=os.environ.copy())
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"batch scoring failed:\n{stderr.read().decode()[-3000:]}")
        result = json.loads(stdout.read())
    return {"rows": result["rows"], "chunks": result["chunks"], "wall_s": round(wall, 2),
            "score_s": result["seconds"], "rows_per_s": round(result["rows"] / result["seconds"]),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "logged": result["prediction_log"] is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--no-log", action="store_true", help="do not write the prediction log")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import yaml

    from benchmarks.serving_bench import train_model

    with tempfile.TemporaryDirectory(prefix="ct-batch-bench-") as tmp:
        folder = Path(tmp)
        os.environ["CT_HOME"] = str(folder / "ct")
        model, sha256, _pipeline, config, _records = train_model(folder)
        config_path = folder / "model.yaml"
        raw = config.model_dump(exclude_none=True, exclude_defaults=True)
        raw["batch"] = {"chunk_rows": args.chunk_rows, "prediction_log": str(folder / "log")}
        config_path.write_text(yaml.safe_dump(raw))
        results = []
        for rows in sorted(args.rows):
            source = folder / f"rows-{rows}.parquet"
            write_input(source, rows)
            results.append(score_in_child(config_path, model, sha256, source, folder / f"out-{rows}.parquet",
                                          log=not args.no_log))
            source.unlink()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    print(f"batch scoring, chunk_rows {args.chunk_rows}, prediction log {'off' if args.no_log else 'on'} ({machine})")
    print(f"{'rows':>10} {'chunks':>7} {'score s':>8} {'rows/s':>9} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{r['rows']:>10} {r['chunks']:>7} {r['score_s']:>8.1f} {r['rows_per_s']:>9} {r['peak_rss_mib']:>13}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "chunk_rows": args.chunk_rows,
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()

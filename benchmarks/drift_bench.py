"""Drift: the project's statistics (ml.drift) against Evidently's DataDriftPreset on the same frames.

    .venv/bin/python -m benchmarks.drift_bench [--rows 10000 100000 1000000] [--wide 100000x1000]
                                               [--skip-evidently-above N] [--out FILE]

For each size, one child process per measurement (so peak memory is that measurement's own) generates
the same seeded reference and current frames (9 numeric columns, two of them shifted in the current
window; `--wide ROWSxCOLS` for wide data), then times:

    evidently   Report([DataDriftPreset()]).run(current, reference)  (the work that grows with the data)
    ours        building the reference profile (once per reference window, then reused) and
                detect_drift(profile, current); the HTML report (the drift_report step: Evidently on
                bounded samples, a fixed cost) is reported on its own line: `report`

and checks both flag the same columns with Evidently's rule (drift.decision: threshold). Peak RSS above
the frames' own memory is reported against the data size. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHIFTED = ("c0", "c1")


def frames(rows: int, columns: int, seed: int = 0) -> tuple[object, object]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(columns)]
    reference = pd.DataFrame(rng.normal(0, 1, (rows, columns)), columns=names)
    current = pd.DataFrame(rng.normal(0, 1, (rows, columns)), columns=names)
    current["c0"] += 0.5
    current["c1"] *= 1.5
    return reference, current


def config(columns: int, decision: str = "threshold", report_rows: int = 0) -> object:
    from ml.config import parse_config

    return parse_config({"name": "bench", "target": "y", "positive_class": 1, "data": {"reference": "r.csv"},
                         "features": {"numeric": [f"c{i}" for i in range(columns)]},
                         "drift": {"decision": decision, "report_rows": report_rows}})


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _evidently(reference: object, current: object) -> list[str]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from ml.drift.report import _parse

    definition = DataDefinition(numerical_columns=list(reference.columns))
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition))
    return sorted(c for c, f in _parse(snapshot.dict()).items() if f["drifted"])


def _ours(reference: object, current: object, columns: int, report: bool) -> tuple[list[str], float]:
    import tempfile

    from ml.data import model_frame
    from ml.drift import detect_drift
    from ml.drift.profile import ReferenceProfile

    cfg = config(columns, report_rows=5000 if report else 0)
    start = time.perf_counter()
    profile = ReferenceProfile.build(model_frame(reference, cfg), cfg, "ref")
    profile_s = time.perf_counter() - start
    if not report:
        return sorted(detect_drift(cfg, profile, current).drifted_features), profile_s
    # the drift_report step's work on top: the current window's profile (its sample), Evidently on both samples
    from ml.drift.report import render_report

    current_profile = ReferenceProfile.build(model_frame(current, cfg), cfg, "cur")
    result = detect_drift(cfg, profile, current_profile)
    with tempfile.TemporaryDirectory() as tmp:
        render_report(cfg, result, profile, current_profile, Path(tmp) / "drift_report.html")
    return sorted(result.drifted_features), profile_s


def measure(method: str, rows: int, columns: int) -> dict[str, object]:
    """One measurement, in this (child) process: imports and a warm-up on 200 rows first, so the time is
    the work that grows with the data."""
    warm = frames(200, columns, seed=1)
    if method == "evidently":
        _evidently(*warm)
    else:
        _ours(*warm, columns, report=method == "report")
    reference, current = frames(rows, columns)
    data_mb = (reference.memory_usage(index=False).sum() + current.memory_usage(index=False).sum()) / 2**20
    base = _rss_mb()
    start = time.perf_counter()
    profile_s = None
    if method == "evidently":
        drifted = _evidently(reference, current)
    else:
        drifted, profile_s = _ours(reference, current, columns, report=method == "report")
    seconds = time.perf_counter() - start
    return {"method": method, "rows": rows, "columns": columns, "seconds": round(seconds, 3),
            "profile_seconds": round(profile_s, 3) if profile_s is not None else None,
            "data_mb": round(data_mb, 1), "extra_peak_mb": round(max(_rss_mb() - base, 0.0), 1),
            "drifted": drifted}


def child(method: str, rows: int, columns: int) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.drift_bench", "--child", method, str(rows), str(columns)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--wide", default="100000x1000", help="ROWSxCOLS of the wide case ('' to skip)")
    parser.add_argument("--skip-evidently-above", type=int, default=10_000_000,
                        help="cells (rows x columns) above which Evidently is not run (hours at 1,000 columns)")
    parser.add_argument("--out", default="benchmarks/results/drift.json")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), int(args.child[2]))))
        return 0
    cases = [(rows, 9) for rows in args.rows]
    if args.wide:
        wide_rows, wide_cols = (int(v) for v in args.wide.lower().split("x"))
        cases.append((wide_rows, wide_cols))
    results = []
    print("| rows x columns | Evidently DataDriftPreset | ours (profile + drift) | ratio | ours: extra peak memory "
          "/ data | same columns flagged |")
    print("|---|---|---|---|---|---|")
    for rows, columns in cases:
        ours = child("ours", rows, columns)
        theirs = child("evidently", rows, columns) if rows * columns <= args.skip_evidently_above else None
        ratio = theirs["seconds"] / ours["seconds"] if theirs else None
        same = (theirs["drifted"] == ours["drifted"]) if theirs else None
        results.append({"ours": ours, "evidently": theirs, "ratio": ratio, "same_columns": same})
        evidently_text = f"{theirs['seconds']:.2f} s" if theirs else "not run"
        ratio_text = f"{ratio:.0f}x" if ratio else "-"
        print(f"| {rows:,} x {columns} | {evidently_text} | {ours['seconds']:.2f} s (profile "
              f"{ours['profile_seconds']:.2f} s) | {ratio_text} | {ours['extra_peak_mb']:.0f} MB / "
              f"{ours['data_mb']:.0f} MB | {same if same is not None else '-'} |", flush=True)
    report = child("report", args.rows[-1], 9)
    print(f"\nHTML report (Evidently on 5,000-row samples) on top of the {args.rows[-1]:,}-row drift run: "
          f"{report['seconds'] - report['profile_seconds']:.2f} s in all")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cases": results, "with_report": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

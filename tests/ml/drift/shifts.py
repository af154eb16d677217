"""A suite of seeded shifts between two windows (none, small, large, scale, categorical, mixed), for
comparing the drift statistics with Evidently's and for the benchmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd

NUMERIC = ["normal", "skewed", "integer", "rating", "flag"]
CATEGORICAL = ["region", "plan"]
SHIFTS = ("none", "small", "large", "scale", "categorical", "mixed")


def window(rows: int, seed: int, shift: str = "none") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    mean = {"small": 0.15, "large": 1.0, "mixed": 0.6}.get(shift, 0.0)
    scale = 2.0 if shift in ("scale", "mixed") else 1.0
    region_p = [0.55, 0.25, 0.15, 0.05] if shift in ("categorical", "mixed") else [0.4, 0.3, 0.2, 0.1]
    frame = pd.DataFrame({
        "normal": rng.normal(mean, 1.0, rows),
        "skewed": rng.lognormal(0.0, 0.5 * scale, rows),
        "integer": rng.poisson(20 + 10 * mean, rows).astype(float),
        "rating": rng.integers(1, 6, rows).astype(float),  # 5 values: a "categorical-like" numeric column
        "flag": (rng.random(rows) < (0.3 + 0.2 * (shift == "mixed"))).astype(float),
        "region": rng.choice(["north", "south", "east", "west"], rows, p=region_p),
        "plan": rng.choice(["basic", "pro"], rows, p=[0.7, 0.3]),
    })
    frame.loc[rng.random(rows) < 0.02, "normal"] = np.nan  # a few missing values, as real data has
    return frame


def config(**drift: object):
    from ml.config import parse_config

    return parse_config({"name": "shifts", "target": "y", "positive_class": 1, "data": {"reference": "r.csv"},
                         "features": {"numeric": NUMERIC, "categorical": CATEGORICAL}, "drift": drift})

"""Decision quality on data the system has never seen: public stream generators and a bundled dataset.

    .venv/bin/python -m benchmarks.decisions [--sizes 200 1000 10000] [--seeds 20] [--out FILE]

For each dataset (river's SEA, Hyperplane, STAGGER, Agrawal and RandomRBF generators, scikit-learn's
bundled breast-cancer data) and each window size, a champion is trained on a reference window with the
project's own training code (ml.train), and then windows go through the project's own checks and policy
(ml.drift.detect_drift, ml.decision.assess_performance / decide, ml.estimate), with the default config
except the most sensitive dataset rule (drift.drift_share: one column is enough):

    none        --seeds windows from the reference's distribution: any retrain is a false retrain
    covariate   P(x) moved (importance resampling on one feature), P(y|x) unchanged
    concept     P(y|x) changed (the generator's other concept; a flipped region for breast cancer)
    gradual     five windows mixing 20%, 40% ... 100% of the new concept: the delay is the window index
                of the first retrain
    prior       P(y) changed (positives resampled to twice their share)

Reported per dataset and size: the false-retrain rate, the detection rate of covariate and concept
windows (retrain decided), the gradual delay, what prior shift decided, and the serving model's ROC AUC
on a fresh window of the new regime after each decision relative to an oracle that retrains at every
change (1.0 = as good as always retraining). A retrain here replaces the champion without the gates
(the benchmark measures decisions, not gates). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ml.config import ModelConfig

log = logging.getLogger("benchmarks.decisions")
REFERENCE_ROWS = 5000
TEST_ROWS = 2000


@dataclass(frozen=True)
class Source:
    """A data source with two concepts: rows(n, concept) -> the first n rows of that concept's stream
    (one fixed stream per concept, so disjoint slices of it are windows of one distribution)."""

    name: str
    numeric: list[str]
    categorical: list[str]
    rows: Callable[[int, int], pd.DataFrame]
    #: the largest window the source has rows for
    max_rows: int = 10**9
    reference_rows: int = REFERENCE_ROWS


def _river(make: Callable[[int], object], categorical: tuple[str, ...] = ()) -> Callable[..., pd.DataFrame]:
    def rows(n: int, concept: int) -> pd.DataFrame:
        stream = make(concept)
        frame = pd.DataFrame([{**{str(k): v for k, v in x.items()}, "y": int(y)}
                              for x, y in stream.take(n)])  # type: ignore[attr-defined]
        for col in categorical:
            frame[col] = frame[col].astype(str)
        return frame

    return rows


def _breast_cancer(n: int, concept: int) -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": "y"})
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # one fixed order
    if concept:  # the relationship flips for large tumours
        flip = frame["mean_radius"] > frame["mean_radius"].median()
        frame.loc[flip, "y"] = 1 - frame.loc[flip, "y"]
    return frame.head(n)


def sources() -> list[Source]:
    from river.datasets import synth

    agrawal_cat = ("elevel", "car", "zipcode")
    return [
        # SEA's concepts are thresholds on x1 + x2: 8 (variant 0) and 9.5 (variant 3)
        Source("sea", ["0", "1", "2"], [], _river(lambda c: synth.SEA(variant=3 * c, noise=0.05, seed=1 + c))),
        Source("hyperplane", [str(i) for i in range(10)], [],
               _river(lambda c: synth.Hyperplane(seed=1 + 7919 * c, n_features=10))),
        Source("stagger", [], ["size", "color", "shape"],
               _river(lambda c: synth.STAGGER(classification_function=c, seed=1 + c, balance_classes=False),
                      ("size", "color", "shape"))),
        Source("agrawal", ["salary", "commission", "age", "hvalue", "hyears", "loan"], list(agrawal_cat),
               _river(lambda c: synth.Agrawal(classification_function=2 * c, seed=1 + c), agrawal_cat)),
        Source("rbf", [str(i) for i in range(10)], [],
               _river(lambda c: synth.RandomRBF(seed_model=11 + c, seed_sample=1 + c, n_features=10,
                                                n_centroids=20))),
        # 569 rows: a 350-row reference, windows of 150 drawn from the other 219
        Source("breast_cancer", [], [], _breast_cancer, max_rows=150, reference_rows=350),
    ]


def config_for(source: Source, sample: pd.DataFrame) -> ModelConfig:
    from ml.config import parse_config

    numeric = source.numeric or [c for c in sample.columns if c != "y" and c not in source.categorical]
    return parse_config({
        "name": f"bench-{source.name}", "target": "y", "positive_class": 1,
        "features": {"numeric": numeric, "categorical": source.categorical},
        "data": {"reference": "reference.csv"}, "contract": {"on_unseen_category": "warn"},
        "model": {"estimator": "random_forest", "params": {"n_estimators": 60, "max_depth": 12, "n_jobs": 1}},
        "drift": {"drift_share": 0.01, "report_rows": 0},
    })


def covariate(pool: pd.DataFrame, n: int, config: ModelConfig, seed: int) -> pd.DataFrame:
    """Importance resampling on the first feature: P(x) moves, P(y|x) stays."""
    rng = np.random.default_rng(seed)
    column = config.feature_columns[0]
    if column in config.features.numeric:
        z = (pool[column] - pool[column].mean()) / (pool[column].std() or 1.0)
        weights = np.exp(1.0 * z.to_numpy())
    else:
        first = sorted(pool[column].unique())[0]
        weights = np.where(pool[column] == first, 4.0, 1.0)
    return pool.iloc[rng.choice(len(pool), n, replace=False, p=weights / weights.sum())].reset_index(drop=True)


def prior(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Positives resampled to twice their share (capped at 0.9)."""
    rng = np.random.default_rng(seed)
    share = min(0.9, 2 * pool["y"].mean())
    positives, negatives = pool[pool["y"] == 1], pool[pool["y"] == 0]
    k = int(round(share * n))
    take = [positives.iloc[rng.choice(len(positives), k, replace=k > len(positives))],
            negatives.iloc[rng.choice(len(negatives), n - k, replace=n - k > len(negatives))]]
    return pd.concat(take).sample(frac=1, random_state=seed).reset_index(drop=True)


@dataclass
class Champion:
    pipeline: object
    on_reference: float
    profile: object
    calibration: object


def train(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None = None) -> Champion:
    from ml.challenger import fit_challenger
    from ml.data import model_frame
    from ml.drift.profile import ReferenceProfile
    from ml.estimate import fit_calibration

    challenger = fit_challenger(config, reference, current)
    profile = ReferenceProfile.build(model_frame(reference, config), config, "reference")
    calibration = fit_calibration(challenger.data.y_eval, challenger.eval_proba)  # as registration stores it
    return Champion(challenger.pipeline, challenger.metrics[config.performance.metric], profile, calibration)


def auc(model: Champion, config: ModelConfig, frame: pd.DataFrame) -> float:
    from ml.data import model_frame
    from ml.metrics import score

    proba = model.pipeline.predict_proba(model_frame(frame, config))
    return score("roc_auc", frame["y"].to_numpy().astype(int), proba)


def decide_on(config: ModelConfig, champion: Champion, window: pd.DataFrame) -> tuple[str, list[str], str]:
    """(decision, triggers, rule) of the project's checks and policy for one labelled window."""
    from ml.data import model_frame
    from ml.decision import PolicyInputs, assess_performance, decide
    from ml.drift import detect_drift
    from ml.estimate import calibration_test, estimate_metric
    from ml.metrics import score

    drift = detect_drift(config, champion.profile, window)
    proba = champion.pipeline.predict_proba(model_frame(window, config))
    y = window["y"].to_numpy().astype(int)
    pc = config.performance
    performance = assess_performance(
        pc.metric, "1", champion.on_reference, score(pc.metric, y, proba), len(window), pc.min_labelled_rows,
        pc.max_decay, estimated=estimate_metric(pc.metric, proba, champion.calibration), calibrated=True,
        calibration=calibration_test(y, proba, champion.calibration), max_calibration_gap=pc.max_calibration_gap,
        confidence=config.gates.confidence)
    decision = decide(contract_passed=True, contract_problems=[], drift=drift, performance=performance,
                      labelled_rows=len(window), force_retrain=False, champion_version="1",
                      champion_trained_on_current=False, min_labelled_rows=config.performance.min_labelled_rows,
                      config=config, policy=PolicyInputs(new_labelled_rows=len(window)))
    return decision.decision, decision.triggers, decision.rule


@dataclass
class Row:
    dataset: str
    size: int
    false_retrains: int = 0
    #: the rules that fired on stable windows
    false_retrain_rules: list[str] = field(default_factory=list)
    no_drift_windows: int = 0
    covariate_detected: int = 0
    covariate_windows: int = 0
    concept_detected: int = 0
    concept_windows: int = 0
    gradual_delay: int | None = None
    prior_decision: str = ""
    serving_vs_oracle: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, object]:
        ratios = [r for r in self.serving_vs_oracle if not math.isnan(r)]
        return {**asdict(self), "false_retrain_rate": self.false_retrains / max(self.no_drift_windows, 1),
                "serving_vs_oracle": round(float(np.mean(ratios)), 4) if ratios else None}


def _after(config: ModelConfig, champion: Champion, decision: str, window: pd.DataFrame, reference: pd.DataFrame,
           test: pd.DataFrame) -> float:
    """The serving model's AUC on a fresh window of the new regime, relative to always retraining."""
    oracle = train(config, reference, window)
    serving = oracle if decision == "retrain" else champion
    return auc(serving, config, test) / auc(oracle, config, test)


def _windows(pool: pd.DataFrame, n: int, count: int, seed: int) -> list[pd.DataFrame]:
    """`count` windows of n rows: disjoint slices while the pool lasts, else random draws from it."""
    if count * n <= len(pool):
        return [pool.iloc[i * n:(i + 1) * n].reset_index(drop=True) for i in range(count)]
    return [pool.sample(n=n, random_state=seed + i).reset_index(drop=True) for i in range(count)]


def run_source(source: Source, size: int, seeds: int) -> Row:
    start = time.perf_counter()
    n = min(size, source.max_rows)
    row = Row(source.name, n)
    ref_rows = source.reference_rows
    old = source.rows(ref_rows + max(seeds * n, 20_000), 0)
    reference, pool_old = old.iloc[:ref_rows].reset_index(drop=True), old.iloc[ref_rows:].reset_index(drop=True)
    new = source.rows(max(4 * n + TEST_ROWS, 4000), 1)
    pool_new, test_new = (new.iloc[:-TEST_ROWS], new.iloc[-TEST_ROWS:]) if len(new) > 2 * TEST_ROWS else (new, new)
    if source.max_rows < 10**9:  # a small bundled dataset: the concept's rows not in the reference
        pool_new = test_new = new.iloc[ref_rows:].reset_index(drop=True)
    config = config_for(source, reference)
    champion = train(config, reference)
    for window in _windows(pool_old, n, seeds, 100):  # stable windows
        decision, _, rule = decide_on(config, champion, window)
        row.no_drift_windows += 1
        if decision == "retrain":
            row.false_retrains += 1
            row.false_retrain_rules.append(rule)
    for seed in range(3):
        window = covariate(pool_old, n, config, seed)
        decision, _, _ = decide_on(config, champion, window)
        row.covariate_windows += 1
        row.covariate_detected += decision == "retrain"
        test = covariate(pool_old, min(TEST_ROWS, len(pool_old) // 2), config, 99)
        row.serving_vs_oracle.append(_after(config, champion, decision, window, reference, test))
        window = pool_new.sample(n=n, random_state=seed).reset_index(drop=True)
        decision, _, _ = decide_on(config, champion, window)
        row.concept_windows += 1
        row.concept_detected += decision == "retrain"
        row.serving_vs_oracle.append(_after(config, champion, decision, window, reference, test_new))
    for step, share in enumerate((0.2, 0.4, 0.6, 0.8, 1.0), 1):
        k = int(round(share * n))
        mixed = pd.concat([pool_new.sample(n=k, random_state=step), pool_old.sample(n=n - k, random_state=step)])
        if decide_on(config, champion, mixed.reset_index(drop=True))[0] == "retrain":
            row.gradual_delay = step
            break
    decision, _, rule = decide_on(config, champion, prior(pool_old, n, 7))
    row.prior_decision = f"{decision} ({rule})"
    row.seconds = round(time.perf_counter() - start, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 10000])
    parser.add_argument("--seeds", type=int, default=20, help="stable windows per dataset and size")
    parser.add_argument("--datasets", nargs="*", help="subset of: sea hyperplane stagger agrawal rbf breast_cancer")
    parser.add_argument("--out", default="benchmarks/results/decisions.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    done: set[tuple[str, int]] = set()
    for source in sources():
        if args.datasets and source.name not in args.datasets:
            continue
        for size in args.sizes:
            if (source.name, min(size, source.max_rows)) in done:
                continue
            done.add((source.name, min(size, source.max_rows)))
            row = run_source(source, size, args.seeds).summary()
            rows.append(row)
            print(f"{row['dataset']:>13} n={row['size']:>5}  false retrains {row['false_retrains']}/"
                  f"{row['no_drift_windows']} {row['false_retrain_rules'] or ''}  covariate "
                  f"{row['covariate_detected']}/{row['covariate_windows']}  "
                  f"concept {row['concept_detected']}/{row['concept_windows']}  gradual delay "
                  f"{row['gradual_delay']}  prior: {row['prior_decision']}  serving/oracle "
                  f"{row['serving_vs_oracle']}  ({row['seconds']} s)", flush=True)
    total_false = sum(r["false_retrains"] for r in rows)
    total_stable = sum(r["no_drift_windows"] for r in rows)
    print(f"\nfalse retrains {total_false}/{total_stable} ({total_false / max(total_stable, 1):.1%}); covariate "
          f"detected {sum(r['covariate_detected'] for r in rows)}/{sum(r['covariate_windows'] for r in rows)}; "
          f"concept detected {sum(r['concept_detected'] for r in rows)}/{sum(r['concept_windows'] for r in rows)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "false_retrains": total_false, "stable_windows": total_stable},
                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

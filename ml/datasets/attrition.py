"""Synthetic "employee attrition" data: a seeded, documented generator for the demo use case.

Generative story (one row = one employee, observed at the end of a window)
--------------------------------------------------------------------------
Features are drawn in causal order, each from the ones before it:

1. ``age`` - normal around 40 (sd 10), clipped to 18-65, integer.
2. ``tenure`` - years at the company: a Beta(1.3, 3.2) fraction of the longest possible tenure
   ``min(40, age - 18)``, so it is right-skewed (median about 5) and always ``<= age - 18``.
3. ``performance_rating`` - 1-5, mostly 3.
4. ``projects_count`` - 1-12, 1 + Poisson, more projects for better performers.
5. ``work_hours`` - weekly hours 30-80: about 43 h, plus 1.5 h per project above 4, sd 5 h.
6. ``promotion_flag`` - promoted in the last 2 years (about 30 %), likelier for good performers
   with a few years of tenure.
7. ``satisfaction_score`` - 1.0-5.0: about 3.5, lowered by long hours, raised by a promotion and
   by a good rating, sd 0.8.
8. ``department`` - six departments with fixed shares (Sales 21 % ... HR 13 %).
9. ``salary`` - annual: department base salary (HR 58k ... Engineering 95k) plus a premium of
   2k per tenure year (first 20 years) and 4k per rating point above 3, plus N(0, 12k) noise;
   clipped to 30k-200k.  The premium (salary minus department base) has the same distribution in
   every department, so "salary relative to the department" is department-neutral.

The label ``attrition`` (1 = the employee left, positive class) is Bernoulli with a logistic
probability; the *reference* mechanism (base rate about 17.5 %) is::

    logit = -1.6 - 1.3 * (satisfaction_score - 3.5) + 0.09 * (work_hours - 45)
            - 1.1 * promotion_flag - 0.35 * (salary - typical department salary) / 10k
            - 0.6 * (log(1 + tenure) - 1.7) + department offset (|offset| <= 0.04)

so low satisfaction, long hours, no recent promotion, a salary below the department's typical
salary and a short tenure all raise attrition.  The noise is large enough that a logistic
regression reaches a ROC AUC of about 0.85 on fresh data (realistic, not separable).

Department has only a tiny direct effect, and two sampling devices keep the demo's fairness
gate (disparate impact >= 0.8 on department) from failing by sampling luck: with plain i.i.d.
sampling, six groups and a 5000-row training window, noise alone pushed the min/max ratio of a
logistic regression's positive-prediction rates (2000-row window) below 0.8 for most seeds, even
with no department effect at all.

* Departments are assigned by systematic stratified sampling along the ranking of the
  department-free reference risk: each department gets its exact share of rows spread evenly
  over low- and high-risk employees.  The assignment depends on the features only (never on the
  label), so the concept-drift window has exactly the reference feature distribution.
* Labels are drawn by systematic sampling within each department: every row is still 1 with
  probability exactly sigmoid(logit), but a department gets round(sum of its probabilities)
  positives instead of a binomial count.

Scenarios
---------
``reference``          training-time distribution and mechanism.
``no_drift``           same process as ``reference``, another seed stream.
``covariate_drift``    satisfaction_score about 1 point lower and work_hours 6 h longer; P(y|x) is
                       unchanged, so attrition rises only because the features moved.
``concept_drift``      features drawn exactly as in ``reference``; only the mechanism changes::

                           logit = -1.65 - 0.3 * (satisfaction_score - 3.5) - 0.03 * (work_hours - 45)
                                   + 0.45 * (projects_count - 4) + 0.3 * promotion_flag
                                   - 0.35 * (salary - typical department salary) / 10k
                                   - 0.3 * (log(1 + tenure) - 1.7) + department offset

                       satisfaction barely matters any more, the hours effect and the promotion
                       effect flip sign (promoted people get poached), and people juggling many
                       projects leave; salary keeps its effect.  A reference-trained logistic
                       regression drops from ROC AUC ~0.85 to ~0.62 (base rate ~21 %).
``unlabelled``         no-drift features without the ``attrition`` column (like a prediction log).
``bad_missing_column`` no-drift rows without the ``salary`` column.
``bad_wrong_type``     no-drift rows where some ``age`` values are words ("forty-two").
``bad_all_nan``        no-drift rows where ``satisfaction_score`` is entirely empty.
``bad_empty``          the labelled schema with zero rows.

Seeds
-----
Every scenario draws from its own stream ``numpy.random.default_rng([seed, scenario_index])``,
so scenarios are independent of each other and of the number of rows of the other scenarios.
Floats are rounded to 2 decimals and salary to whole numbers, so the CSV files written by
:func:`write_demo_data` are byte-identical for the same seed (default 42).

Command line::

    python -m ml.datasets.attrition --out data/attrition [--seed 42]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

LABEL = "attrition"
NUMERIC_FEATURES: tuple[str, ...] = (
    "age",
    "tenure",
    "satisfaction_score",
    "performance_rating",
    "work_hours",
    "projects_count",
    "promotion_flag",
    "salary",
)
CATEGORICAL_FEATURES: tuple[str, ...] = ("department",)
FEATURES: tuple[str, ...] = NUMERIC_FEATURES + CATEGORICAL_FEATURES
COLUMNS: tuple[str, ...] = FEATURES + (LABEL,)

#: department -> (share of employees, base salary, direct attrition logit offset)
DEPARTMENTS: dict[str, tuple[float, float, float]] = {
    "Sales": (0.21, 65_000.0, 0.04),
    "Engineering": (0.20, 95_000.0, -0.04),
    "Operations": (0.17, 60_000.0, 0.02),
    "Marketing": (0.15, 70_000.0, 0.0),
    "Finance": (0.14, 85_000.0, -0.02),
    "HR": (0.13, 58_000.0, 0.0),
}

#: salary = department base + raises per tenure year (first 20) and rating point above 3 + noise
SALARY_PER_TENURE_YEAR = 2_000.0
SALARY_PER_RATING_POINT = 4_000.0
SALARY_NOISE_SD = 12_000.0
#: mean of (salary - department base salary), the same in every department
TYPICAL_SALARY_PREMIUM = 13_000.0

#: scenario name -> index of its seed stream (never reorder: it would change every file)
SCENARIOS: dict[str, int] = {
    "reference": 0,
    "no_drift": 1,
    "covariate_drift": 2,
    "concept_drift": 3,
    "unlabelled": 4,
    "bad_missing_column": 5,
    "bad_wrong_type": 6,
    "bad_all_nan": 7,
    "bad_empty": 8,
}

#: file written by write_demo_data -> (scenario, rows)
DEMO_FILES: dict[str, tuple[str, int]] = {
    "reference.csv": ("reference", 5000),
    "current_no_drift.csv": ("no_drift", 2000),
    "current_covariate_drift.csv": ("covariate_drift", 2000),
    "current_concept_drift.csv": ("concept_drift", 2000),
    "current_unlabelled.csv": ("unlabelled", 2000),
    "bad_missing_column.csv": ("bad_missing_column", 500),
    "bad_wrong_type.csv": ("bad_wrong_type", 500),
    "bad_all_nan.csv": ("bad_all_nan", 500),
    "bad_empty.csv": ("bad_empty", 0),
}

#: covariate drift: shift of mean satisfaction (points) and weekly hours
COVARIATE_SATISFACTION_SHIFT = -0.8
COVARIATE_HOURS_SHIFT = 6.0

_UNITS = ["", *"one two three four five six seven eight nine ten eleven twelve thirteen".split()]
_UNITS += "fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _age_in_words(age: int) -> str:
    if age < 20:
        return _UNITS[age]
    tens, units = divmod(age, 10)
    return _TENS[tens] + ("-" + _UNITS[units] if units else "")


def _department_counts(n_rows: int) -> np.ndarray:
    """Exact number of rows per department (largest-remainder rounding of the shares)."""
    shares = np.array([v[0] for v in DEPARTMENTS.values()])
    raw = n_rows * shares / shares.sum()
    counts = np.floor(raw).astype(np.int64)
    leftover = n_rows - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:leftover]] += 1
    return counts


def _assign_departments(rng: np.random.Generator, risk: np.ndarray) -> np.ndarray:
    """Department of each row, by systematic stratified sampling along the risk ranking.

    Each department gets its exact share of rows, spread evenly over the ranking of ``risk`` (the
    department-free part of the reference logit), so every department has the same mix of low- and
    high-risk employees in every sample, not only on average.
    """
    names = np.array(list(DEPARTMENTS), dtype=object)
    counts = _department_counts(len(risk))
    positions = np.concatenate([(np.arange(c) + rng.random()) / max(c, 1) for c in counts])
    owners = np.repeat(np.arange(len(names)), counts)
    sequence = owners[np.argsort(positions, kind="stable")]
    department = np.empty(len(risk), dtype=object)
    department[np.argsort(risk, kind="stable")] = names[sequence]
    return department


def _reference_risk(
    sat: np.ndarray, hours: np.ndarray, promo: np.ndarray, rel_salary: np.ndarray, tenure: np.ndarray
) -> np.ndarray:
    """Department-free part of the reference logit (see the module docstring)."""
    return (
        -1.6
        - 1.3 * (sat - 3.5)
        + 0.09 * (hours - 45.0)
        - 1.1 * promo
        - 0.35 * rel_salary
        - 0.6 * (np.log1p(tenure) - 1.7)
    )


def _features(rng: np.random.Generator, n_rows: int, covariate_drift: bool = False) -> pd.DataFrame:
    """Draw the features in causal order (see the module docstring)."""
    age = np.clip(np.rint(rng.normal(40.0, 10.0, n_rows)), 18, 65).astype(np.int64)
    max_tenure = np.minimum(40.0, age - 18.0)
    tenure = np.round(max_tenure * rng.beta(1.3, 3.2, n_rows), 2)
    tenure = np.clip(tenure, 0.0, max_tenure)

    performance = rng.choice(np.arange(1, 6), size=n_rows, p=[0.05, 0.15, 0.45, 0.25, 0.10]).astype(np.int64)
    projects = np.clip(1 + rng.poisson(2.8 + 0.6 * (performance - 3)), 1, 12).astype(np.int64)

    hours = 43.0 + 1.5 * (projects - 4) + rng.normal(0.0, 5.0, n_rows)
    if covariate_drift:
        hours = hours + COVARIATE_HOURS_SHIFT
    hours = np.round(np.clip(hours, 30.0, 80.0), 2)

    p_promo = _sigmoid(-1.9 + 0.8 * (performance - 3) + 0.5 * np.minimum(tenure, 3.0) - 0.08 * tenure)
    promotion = (rng.random(n_rows) < p_promo).astype(np.int64)

    satisfaction = (
        3.5
        - 0.04 * (hours - 43.0)
        + 0.35 * promotion
        + 0.12 * (performance - 3)
        + rng.normal(0.0, 0.8, n_rows)
    )
    if covariate_drift:
        satisfaction = satisfaction + COVARIATE_SATISFACTION_SHIFT
    satisfaction = np.round(np.clip(satisfaction, 1.0, 5.0), 2)

    premium = (
        SALARY_PER_TENURE_YEAR * np.minimum(tenure, 20.0)
        + SALARY_PER_RATING_POINT * (performance - 3)
        + rng.normal(0.0, SALARY_NOISE_SD, n_rows)
    )
    rel_salary = (premium - TYPICAL_SALARY_PREMIUM) / 10_000.0
    risk = _reference_risk(satisfaction, hours, promotion, rel_salary, tenure)
    department = _assign_departments(rng, risk)
    base_salary = np.array([DEPARTMENTS[d][1] for d in department], dtype=float)
    salary = np.round(np.clip(base_salary + premium, 30_000.0, 200_000.0), 0)

    return pd.DataFrame(
        {
            "age": age,
            "tenure": tenure,
            "satisfaction_score": satisfaction,
            "performance_rating": performance,
            "work_hours": hours,
            "projects_count": projects,
            "promotion_flag": promotion,
            "salary": salary,
            "department": department,
        }
    )


def _relative_salary(frame: pd.DataFrame) -> np.ndarray:
    """(salary - typical salary of the employee's department) in units of 10k."""
    base = frame["department"].map({d: v[1] for d, v in DEPARTMENTS.items()}).to_numpy(dtype=float)
    return (frame["salary"].to_numpy(dtype=float) - base - TYPICAL_SALARY_PREMIUM) / 10_000.0


def attrition_logit(frame: pd.DataFrame, concept: str = "reference") -> np.ndarray:
    """Log-odds of attrition for each row under the ``reference`` or ``concept_drift`` mechanism."""
    sat = frame["satisfaction_score"].to_numpy(dtype=float)
    hours = frame["work_hours"].to_numpy(dtype=float)
    promo = frame["promotion_flag"].to_numpy(dtype=float)
    tenure = frame["tenure"].to_numpy(dtype=float)
    projects = frame["projects_count"].to_numpy(dtype=float)
    rel_salary = _relative_salary(frame)
    dept = frame["department"].map({d: v[2] for d, v in DEPARTMENTS.items()}).to_numpy(dtype=float)
    if concept == "reference":
        return _reference_risk(sat, hours, promo, rel_salary, tenure) + dept
    if concept == "concept_drift":
        return (
            -1.65
            - 0.3 * (sat - 3.5)
            - 0.03 * (hours - 45.0)
            + 0.45 * (projects - 4.0)
            + 0.3 * promo
            - 0.35 * rel_salary
            - 0.3 * (np.log1p(tenure) - 1.7)
            + dept
        )
    raise ValueError(f"unknown concept {concept!r}; valid: 'reference', 'concept_drift'")


def _labels(rng: np.random.Generator, frame: pd.DataFrame, concept: str) -> np.ndarray:
    """Draw the labels: each row is 1 with probability sigmoid(logit), exactly.

    Within each department the draws use systematic sampling (rows in random order, one uniform
    start, a positive wherever the running sum of probabilities crosses start + k), so a department
    gets round(sum of its probabilities) positives instead of a binomial count around it.
    """
    p = _sigmoid(attrition_logit(frame, concept))
    labels = np.zeros(len(frame), dtype=np.int64)
    department = frame["department"].to_numpy()
    for name in DEPARTMENTS:
        rows = np.flatnonzero(department == name)
        rows = rows[rng.permutation(len(rows))]
        crossings = np.floor(np.cumsum(p[rows]) - rng.random())
        labels[rows] = np.diff(crossings, prepend=-1.0) > 0
    return labels


def generate(scenario: str, n_rows: int, seed: int) -> pd.DataFrame:
    """Return ``n_rows`` rows of ``scenario``, drawn from the stream ``default_rng([seed, index])``.

    ``bad_empty`` always has zero rows.  Raises ValueError for an unknown scenario (the message lists
    the valid ones) or a negative n_rows.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    rng = np.random.default_rng([seed, SCENARIOS[scenario]])
    if scenario == "bad_empty":
        n_rows = 0
    frame = _features(rng, n_rows, covariate_drift=scenario == "covariate_drift")
    concept = "concept_drift" if scenario == "concept_drift" else "reference"
    frame[LABEL] = _labels(rng, frame, concept)

    if scenario == "unlabelled":
        frame = frame.drop(columns=[LABEL])
    elif scenario == "bad_missing_column":
        frame = frame.drop(columns=["salary"])
    elif scenario == "bad_wrong_type":
        bad = rng.random(n_rows) < 0.05
        if n_rows and not bad.any():
            bad[0] = True
        ages = frame["age"].astype(object)
        ages[bad] = [_age_in_words(int(a)) for a in frame.loc[bad, "age"]]
        frame["age"] = ages
    elif scenario == "bad_all_nan":
        frame["satisfaction_score"] = np.nan
    logger.debug("generated scenario=%s rows=%d seed=%d", scenario, len(frame), seed)
    return frame


def write_demo_data(out_dir: Path, seed: int = 42) -> list[Path]:
    """Write every demo file (see DEMO_FILES) as CSV into ``out_dir``; return the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for filename, (scenario, n_rows) in DEMO_FILES.items():
        frame = generate(scenario, n_rows, seed)
        path = out_dir / filename
        frame.to_csv(path, index=False, lineterminator="\n")
        written.append(path)
        logger.info("wrote %s (%d rows, scenario=%s, seed=%d)", path, len(frame), scenario, seed)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: write the demo files and print their paths."""
    parser = argparse.ArgumentParser(
        prog="python -m ml.datasets.attrition",
        description="Write the seeded synthetic employee-attrition demo data files.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (created if missing)")
    parser.add_argument("--seed", type=int, default=42, help="base seed (default: 42)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in write_demo_data(args.out, seed=args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

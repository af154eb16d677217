"""The data contract: the first step of every run. It fails closed.

`screen_window(config, window, name)` comes first: it keeps only the model's columns (features, target,
sensitive feature: nothing else reaches a snapshot or an MLflow artifact) and drops the rows that break the
contract (a non-numeric or infinite number, a value outside [min, max] or not in `allowed`), counted per
reason in a `Quarantine`; above `contract.max_invalid_fraction` of a window's rows the run is blocked
instead, so one bad request among many never blocks a window but a broken feed still does.
`check_contract(config, reference, current)` then inspects both windows against the config and returns
every violation it finds (not only the first), each naming the window and the column. A run whose
contract fails is `blocked`: nothing is trained, registered or deployed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ml.data import label_key, take_rows
from ml.result import Result

if TYPE_CHECKING:
    import pandas as pd

    from ml.config import ModelConfig
    from ml.data import Window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContractResult:
    passed: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reference_rows: int = 0
    current_rows: int = 0
    current_labelled_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Quarantine(Result):
    """The rows of one window dropped because they break the contract, and what its reader left out."""

    summary_fields = ("rows", "dropped", "reasons")

    rows: int = 0
    dropped: int = 0
    #: reason ("column 'age' outside [16.0, 80.0]") -> rows it dropped (a row can have several reasons)
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    #: prediction log only: later feedback labels ignored (the first label counts), lines marked `unseen`
    feedback_ignored: int = 0
    marked_unseen: int = 0

    @property
    def fraction(self) -> float:
        return self.dropped / self.rows if self.rows else 0.0

    def problem(self, window: str, limit: float) -> str | None:
        """The blocking message when more than `limit` of the rows were dropped, else None."""
        if self.fraction <= limit:
            return None
        why = "; ".join(f"{reason}: {n} rows, e.g. {self.examples.get(reason, '')}"
                        for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1])[:5])
        return (f"{window} window: {self.dropped} of {self.rows} rows ({self.fraction:.1%}) break the contract "
                f"({why}): above contract.max_invalid_fraction {limit:.1%}")


def model_columns(config: ModelConfig) -> list[str]:
    """The columns a window keeps: features, target and sensitive feature (no other column is persisted)."""
    return list(dict.fromkeys([*config.required_columns, config.target]))


def _row_violations(config: ModelConfig, frame: pd.DataFrame) -> dict[str, pd.Series]:
    """reason -> boolean mask of the rows it rejects (only reasons that reject at least one row)."""
    import numpy as np
    import pandas as pd

    masks: dict[str, pd.Series] = {}
    for col in config.features.numeric:
        if col not in frame.columns:
            continue
        values, rule = frame[col], config.contract.columns.get(col)
        number = pd.to_numeric(values, errors="coerce").astype("float64")
        masks[f"column '{col}' not numeric"] = number.isna() & values.notna()
        masks[f"column '{col}' infinite"] = pd.Series(np.isinf(number.to_numpy()), index=frame.index)
        if rule and (rule.min is not None or rule.max is not None):
            lo = -np.inf if rule.min is None else rule.min
            hi = np.inf if rule.max is None else rule.max
            masks[f"column '{col}' outside [{rule.min}, {rule.max}]"] = (number < lo) | (number > hi)
    for col, rule in config.contract.columns.items():
        if rule.allowed is not None and col in frame.columns:
            values = frame[col]
            allowed = {label_key(v) for v in rule.allowed}
            masks[f"column '{col}' not in the allowed list"] = values.notna() & ~values.map(label_key).isin(allowed)
    return {reason: mask for reason, mask in masks.items() if mask.any()}


def screen_window(config: ModelConfig, window: Window) -> tuple[Window, Quarantine]:
    """The window with only the model's columns and without the rows that break the contract, and the count
    of what was dropped. Vectorised (one pass per rule); pure."""
    import dataclasses

    import numpy as np

    frame = window.frame
    kept = [c for c in model_columns(config) if c in frame.columns]
    if list(frame.columns) != kept:  # a window read for these columns is not copied
        frame = frame[kept]
    masks = _row_violations(config, frame)
    bad = np.logical_or.reduce([m.to_numpy() for m in masks.values()]) if masks else np.zeros(len(frame), bool)
    col_of = {reason: reason.split("'")[1] for reason in masks}
    quarantine = Quarantine(rows=len(frame), dropped=int(bad.sum()),
                            reasons={r: int(m.sum()) for r, m in masks.items()},
                            examples={r: _examples(frame.loc[m, col_of[r]]) for r, m in masks.items()},
                            feedback_ignored=window.counts.get("feedback_ignored", 0),
                            marked_unseen=window.counts.get("marked_unseen", 0))
    if quarantine.dropped:
        log.warning("%s: %d of %d rows dropped, they break the contract: %s", window.path, quarantine.dropped,
                    quarantine.rows, quarantine.reasons)
        frame = take_rows(frame, ~bad)
    return dataclasses.replace(window, frame=frame), quarantine


def _examples(values: pd.Series, limit: int = 3) -> str:
    return ", ".join(repr(v) for v in values.drop_duplicates().head(limit).tolist())


def _check_columns(config: ModelConfig, frame: pd.DataFrame, window: str, problems: list[str]) -> None:
    import numpy as np
    import pandas as pd

    source = f"(expected by config {config.source or config.name})"
    missing = [c for c in config.required_columns if c not in frame.columns]
    for col in missing:
        problems.append(f"column '{col}' missing from {window} window {source}")
    if len(frame) == 0:
        return
    for col in config.required_columns:
        if col in missing:
            continue
        values = frame[col]
        rule = config.contract.columns.get(col)
        nulls = int(values.isna().sum())
        if nulls == len(values):
            problems.append(f"column '{col}' in {window} window is entirely empty (all {nulls} values missing)")
            continue
        limit = rule.max_null_fraction if rule and rule.max_null_fraction is not None \
            else config.contract.max_null_fraction
        if nulls / len(values) > limit:
            problems.append(f"column '{col}' in {window} window has {nulls / len(values):.1%} missing values "
                            f"(limit {limit:.1%}: contract.max_null_fraction)")
        if col in config.features.numeric:
            as_number = pd.to_numeric(values, errors="coerce")
            bad = values[as_number.isna() & values.notna()]
            if len(bad):
                problems.append(f"column '{col}' in {window} window must be numeric but has {len(bad)} "
                                f"non-numeric values, e.g. {_examples(bad)}")
                continue
            finite = np.isfinite(as_number.dropna().to_numpy(dtype="float64"))
            if not finite.all():
                problems.append(f"column '{col}' in {window} window has {int((~finite).sum())} infinite values")
            if rule and (rule.min is not None or rule.max is not None):
                lo = -np.inf if rule.min is None else rule.min
                hi = np.inf if rule.max is None else rule.max
                outside = as_number[(as_number < lo) | (as_number > hi)]
                if len(outside):
                    problems.append(f"column '{col}' in {window} window has {len(outside)} values outside "
                                    f"[{rule.min}, {rule.max}], e.g. {_examples(outside)}")
        if rule and rule.allowed is not None:
            allowed = {label_key(v) for v in rule.allowed}
            bad = values[values.notna() & ~values.map(label_key).isin(allowed)]
            if len(bad):
                problems.append(f"column '{col}' in {window} window has {len(bad)} values not in the allowed "
                                f"list, e.g. {_examples(bad)}")


def _check_target(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame | None,
                  problems: list[str]) -> None:
    target = config.target
    if target not in reference.columns:
        problems.append(f"target column '{target}' missing from reference window (the reference must be labelled)")
        return
    ref_labels = reference[target]
    if len(reference) and ref_labels.isna().any():
        problems.append(f"target column '{target}' in reference window has {int(ref_labels.isna().sum())} "
                        "missing labels")
    ref_classes = {label_key(v) for v in ref_labels.dropna()}
    if config.task == "binary":
        positive = label_key(config.positive_class)
        if len(reference) and positive not in ref_classes:
            problems.append(f"positive_class {config.positive_class!r} never occurs in target '{target}' of the "
                            f"reference window (labels seen: {sorted(ref_classes)[:5]})")
        if len(ref_classes) > 2:
            problems.append(f"target '{target}' has {len(ref_classes)} classes in the reference window but task "
                            f"is binary (labels seen: {sorted(ref_classes)[:5]})")
    if len(reference) and len(ref_classes) < 2:
        problems.append(f"target '{target}' has a single class in the reference window: nothing to learn")
    if current is not None and target in current.columns:
        cur_classes = {label_key(v) for v in current[target].dropna()}
        unseen = sorted(cur_classes - ref_classes)
        if unseen:
            problems.append(f"target '{target}' in current window has labels {unseen[:5]} never seen in reference")


def _check_categories(config: ModelConfig, reference: pd.DataFrame, current: pd.DataFrame,
                      problems: list[str], warnings: list[str]) -> None:
    for col in config.features.categorical:
        if col not in reference.columns or col not in current.columns:
            continue
        known = {label_key(v) for v in reference[col].dropna()}
        cur = current[col].dropna()
        unseen = cur[~cur.map(label_key).isin(known)]
        if len(unseen):
            share, limit = len(unseen) / len(current), config.contract.max_unseen_fraction
            message = (f"column '{col}' in current window has {len(unseen)} rows ({share:.1%}) with categories "
                       f"never seen in reference, e.g. {_examples(unseen)}")
            if share <= limit:  # a few odd requests never block a window (contract.max_unseen_fraction)
                warnings.append(f"{message}: within contract.max_unseen_fraction {limit:.1%}")
            elif config.contract.on_unseen_category == "fail":
                problems.append(f"{message}: above contract.max_unseen_fraction {limit:.1%} (raise it, or set "
                                "contract.on_unseen_category: warn to accept them)")
            else:
                warnings.append(message)


def check_contract(config: ModelConfig, reference: Window, current: Window | None) -> ContractResult:
    """Check both windows; the result lists every violation. Pure: reads frames, writes nothing."""
    problems: list[str] = []
    warnings: list[str] = []
    ref = reference.frame
    min_rows = config.contract.min_rows
    if len(ref) < min_rows:
        problems.append(f"reference window {reference.path} has {len(ref)} rows (contract.min_rows: {min_rows})")
    _check_columns(config, ref, "reference", problems)
    _check_target(config, ref, current.frame if current is not None else None, problems)
    cur_rows = labelled_rows = 0
    if current is not None:
        cur = current.frame
        cur_rows = len(cur)
        if cur_rows < min_rows:
            problems.append(f"current window {current.path} has {cur_rows} rows (contract.min_rows: {min_rows})")
        _check_columns(config, cur, "current", problems)
        _check_categories(config, ref, cur, problems, warnings)
        if config.target in cur.columns:
            labelled_rows = int(cur[config.target].notna().sum())
    return ContractResult(passed=not problems, problems=problems, warnings=warnings,
                          reference_rows=len(ref), current_rows=cur_rows, current_labelled_rows=labelled_rows)

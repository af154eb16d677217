"""`model.estimator: auto`: a small, bounded candidate search that only chooses a model it can serve.

How it chooses (README "How auto chooses"):
1. Candidates: every setting of the search grid of each estimator in `model.search.estimators` (default:
   every registered estimator with a grid; ml.estimators), taken round-robin over estimators, cheapest
   first, so a search cut short still tried each estimator once.
2. Each candidate is scored by stratified k-fold cross-validation (`model.search.cv_folds`, shuffled with
   `training.seed`) of `performance.metric` on the training rows (a stratified sample of at most
   `model.search.max_rows`), fitted with the training weights. No candidate starts once
   `model.search.budget_s` seconds are spent (the first always runs): the rest are recorded as skipped.
   Before its folds, a tree ensemble is bounded (ml.estimators) and estimated from a tenth of its trees
   fitted on all training rows and exported (ml.train.early_estimate): one whose projected ONNX size or
   latency fails its gate is excluded, neither cross-validated nor trained to the end.
3. In order of mean CV score (ties: candidate order), candidates are refitted on all training rows
   until one passes the serving gates the gates step will apply (ONNX conversion, `gates.parity_tolerance`
   on the holdout, `gates.max_latency_ms`, `gates.max_size_mb`). The first that passes is chosen; those
   tried before it are excluded with the reason.

Everything is seeded (folds, sample, estimators), so the same data gives the same choice unless the
budget cuts the search at a different candidate on a slower or busier machine (the record says so).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml.data import take_rows
from ml.errors import TrainingError
from ml.train import CandidateResult, SearchReport

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ml.config import ModelConfig
    from ml.gates import GateResult
    from ml.train import Challenger, TrainingData

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _CvData:
    x: pd.DataFrame
    y: np.ndarray
    weights: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


def cv_data(config: ModelConfig, data: TrainingData) -> _CvData:
    """The rows cross-validation runs on (a stratified sample of at most model.search.max_rows) and the folds."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold, train_test_split

    spec, seed = config.model.search, config.training.seed
    index = np.arange(len(data.y_train))
    if len(index) > spec.max_rows:
        index, _ = train_test_split(index, train_size=spec.max_rows, random_state=seed, stratify=data.y_train)
        index = np.sort(index)
    y = data.y_train[index]
    smallest = int(np.bincount(y).min())
    folds = min(spec.cv_folds, smallest)
    if folds < 2:
        raise TrainingError(f"model.estimator auto: a class has {smallest} training row(s), too few to "
                            "cross-validate; add labelled rows or name a model.estimator")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return _CvData(x=take_rows(data.x_train, index), y=y, weights=data.weights[index],
                   folds=list(splitter.split(index, y)))


def cross_validate(config: ModelConfig, estimator: str, setting: dict[str, Any], cv: _CvData,
                   classes: int) -> list[float]:
    """performance.metric on each held-out fold of a candidate fitted on the other folds."""
    from ml.metrics import score
    from ml.train import fit_pipeline

    scores = []
    for train, test in cv.folds:
        pipeline, _ = fit_pipeline(config, estimator, setting, cv.x.iloc[train], cv.y[train], cv.weights[train],
                                   classes)
        proba = pipeline.predict_proba(cv.x.iloc[test])
        scores.append(score(config.performance.metric, cv.y[test], proba, config.model.threshold))
    return scores


def _score(config: ModelConfig, candidate: CandidateResult, data: TrainingData, cv: _CvData) -> CandidateResult:
    import numpy as np

    from ml.estimators import SizeBudgetError
    from ml.train import bounded_params, early_estimate

    started = time.monotonic()
    try:
        params = bounded_params(config, candidate.estimator, candidate.setting, len(data.x_train),
                                len(data.classes))
    except SizeBudgetError as exc:  # cannot fit the size gate whatever it learns: not worth a fold
        return dataclasses.replace(candidate, status="excluded", reason=f"size gate: {exc}")
    try:
        problem = early_estimate(config, candidate.estimator, candidate.setting, data)
        if problem:  # would break the size or latency gate: neither cross-validated nor trained to the end
            return dataclasses.replace(candidate, status="excluded", reason=problem, params=params)
        scores = cross_validate(config, candidate.estimator, candidate.setting, cv, len(data.classes))
    except TrainingError as exc:
        return dataclasses.replace(candidate, status="failed", reason=str(exc), params=params)
    finite = [s for s in scores if not math.isnan(s)]
    return dataclasses.replace(candidate, status="scored", params=params,
                               cv_score=float(np.mean(finite)) if finite else None,
                               cv_std=float(np.std(finite)) if finite else None,
                               cv_seconds=round(time.monotonic() - started, 3))


def _serve(config: ModelConfig, candidate: CandidateResult, data: TrainingData,
           window: str) -> tuple[Challenger, dict[str, GateResult]]:
    """The candidate refitted on all training rows, exported and checked; TrainingError saying why not."""
    from ml.train import export_checked, fit_pipeline, scored_challenger

    pipeline, params = fit_pipeline(config, candidate.estimator, candidate.setting, data.x_train, data.y_train,
                                    data.weights, len(data.classes))
    return export_checked(config, scored_challenger(config, pipeline, data, candidate.estimator, params, window))


def _try_serving(config: ModelConfig, candidate: CandidateResult, data: TrainingData,
                 window: str) -> tuple[CandidateResult, Challenger | None]:
    """(the candidate's new state, its challenger when it can be served)."""
    started = time.monotonic()
    try:
        challenger, gates = _serve(config, candidate, data, window)
    except TrainingError as exc:
        return dataclasses.replace(candidate, status="excluded", reason=str(exc),
                                   refit_seconds=round(time.monotonic() - started, 3)), None
    return dataclasses.replace(candidate, status="chosen", refit_seconds=round(time.monotonic() - started, 3),
                               onnx_mb=gates["size"].value, latency_p99_ms=gates["latency"].value,
                               parity=gates["onnx_parity"].value), challenger


def _rank(config: ModelConfig, candidates: list[CandidateResult]) -> list[int]:
    from ml.metrics import HIGHER_IS_BETTER

    sign = 1.0 if HIGHER_IS_BETTER[config.performance.metric] else -1.0
    scored = [i for i, c in enumerate(candidates) if c.status == "scored"]
    return sorted(scored, key=lambda i: (-math.inf if candidates[i].cv_score is None
                                         else -sign * candidates[i].cv_score, i))


def search_challenger(config: ModelConfig, data: TrainingData, window: str) -> Challenger:
    """Search the candidates on `data`'s training rows and return the chosen one fitted on all of them."""
    from ml.estimators import search_space

    spec = config.model.search
    started = time.monotonic()
    cv = cv_data(config, data)
    log.info("auto: searching %d candidates by %d-fold CV %s on %d of %d training rows (budget %.0f s)",
             len(space := search_space(spec.estimators)), len(cv.folds), config.performance.metric, len(cv.y),
             len(data.x_train), spec.budget_s)
    candidates = []
    for estimator, number, setting in space:
        candidate = CandidateResult(name=f"{estimator}_{number}", estimator=estimator, setting=setting,
                                    status="skipped", reason=f"search budget of {spec.budget_s:g} s spent")
        if not candidates or time.monotonic() - started < spec.budget_s:  # the first one always runs
            candidate = _score(config, dataclasses.replace(candidate, reason=None), data, cv)
            log.info("auto: %s %s cv %s=%s (%s s)%s", candidate.name, setting, config.performance.metric,
                     candidate.cv_score, candidate.cv_seconds, f" {candidate.status}: {candidate.reason}"
                     if candidate.reason else "")
        candidates.append(candidate)
    chosen, chosen_name = None, None
    for i in _rank(config, candidates):
        candidates[i], chosen = _try_serving(config, candidates[i], data, window)
        log.info("auto: %s %s%s", candidates[i].name, candidates[i].status,
                 f": {candidates[i].reason}" if candidates[i].reason else "")
        if chosen is not None:
            chosen_name = candidates[i].name
            break
    report = SearchReport(metric=config.performance.metric, cv_folds=len(cv.folds), cv_rows=len(cv.y),
                          budget_s=spec.budget_s, elapsed_s=round(time.monotonic() - started, 3),
                          chosen=chosen_name, candidates=candidates)
    if chosen is None:
        reasons = "; ".join(f"{c.name} {c.status}: {c.reason}" for c in candidates if c.reason)
        raise TrainingError(f"model.estimator auto: no candidate can be served ({reasons or 'no candidates'})")
    return dataclasses.replace(chosen, search=report)

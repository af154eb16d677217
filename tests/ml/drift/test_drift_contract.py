"""The drift step's contract with Evidently's snapshot JSON (the HTML report's sample verdicts are parsed
from it, and test_evidently_agreement.py compares our statistics with it).

`ml.drift.report._parse` reads Evidently's snapshot dict (ValueDrift metrics for method/score/threshold,
their tests for the verdict). A snapshot stored from the pinned Evidently version pins that parsing; a
live report on the same seeded frames must parse to the same result, so an Evidently upgrade that changes
its JSON fails here, loudly. After a deliberate upgrade, regenerate the stored file with
`PYTHONPATH=. .venv/bin/python tests/ml/drift/test_drift_contract.py` and rename it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.drift.report import _parse

STORED = Path(__file__).parents[1] / "data" / "evidently_0.7.23_drift_snapshot.json"


def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded windows: 'a' shifted, 'b' stable, 'c' (categorical) re-weighted."""
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"a": rng.normal(0, 1, 300), "b": rng.normal(5, 2, 300),
                              "c": rng.choice(["x", "y", "z"], 300)})
    current = pd.DataFrame({"a": rng.normal(0.8, 1, 200), "b": rng.normal(5, 2, 200),
                            "c": rng.choice(["x", "y", "z"], 200, p=[0.6, 0.2, 0.2])})
    return reference, current


def live_snapshot() -> dict:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current = frames()
    definition = DataDefinition(numerical_columns=["a", "b"], categorical_columns=["c"])
    report = Report([DataDriftPreset(columns=["a", "b", "c"], drift_share=0.5)], include_tests=True)
    return report.run(Dataset.from_pandas(current, data_definition=definition),
                      Dataset.from_pandas(reference, data_definition=definition)).dict()


def test_the_stored_snapshot_parses_to_known_results():
    parsed = _parse(json.loads(STORED.read_text()))
    assert set(parsed) == {"a", "b", "c"}
    # Below 1,000 reference rows Evidently tests numerics with KS and categoricals with chi-squared (p-values).
    assert parsed["a"] == {"method": "K-S p_value", "score": pytest.approx(8.99e-14, rel=1e-2),
                           "threshold": 0.05, "drifted": True}
    assert parsed["b"]["method"] == "K-S p_value" and parsed["b"]["drifted"] is False
    assert parsed["b"]["score"] == pytest.approx(0.9331, abs=1e-4)
    assert parsed["c"]["method"] == "chi-square p_value" and parsed["c"]["drifted"] is True
    assert parsed["c"]["score"] < 1e-20


def test_the_installed_evidently_still_produces_that_json():
    import evidently

    live = _parse(live_snapshot())
    stored = _parse(json.loads(STORED.read_text()))
    assert live.keys() == stored.keys(), f"evidently {evidently.__version__} names the columns differently"
    for column, expected in stored.items():
        got = live[column]
        assert {k: got[k] for k in ("method", "threshold", "drifted")} == \
            {k: expected[k] for k in ("method", "threshold", "drifted")}, \
            f"evidently {evidently.__version__} changed the drift result of '{column}': {got} != {expected}"
        assert got["score"] == pytest.approx(expected["score"], rel=1e-6, abs=1e-12)


def test_detect_drift_with_evidentlys_rule_gives_its_verdicts_in_feature_order():
    from ml.config import parse_config
    from ml.drift import detect_drift

    config = parse_config({"name": "m", "target": "y", "positive_class": 1,
                           "features": {"numeric": ["b", "a"], "categorical": ["c"]}, "data": {"reference": "r.csv"},
                           "drift": {"decision": "threshold"}})
    reference, current = frames()
    result = detect_drift(config, reference, current)
    assert list(result.features) == ["b", "a", "c"]
    assert result.drifted_features == ["a", "c"] and result.drifted_share == pytest.approx(2 / 3)
    assert result.dataset_drift is True  # 2/3 >= drift.drift_share 0.5


if __name__ == "__main__":  # regenerate the stored snapshot after a deliberate Evidently upgrade
    STORED.write_text(json.dumps(live_snapshot(), indent=1, sort_keys=True) + "\n")

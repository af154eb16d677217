"""The lineage datasets' schema: `window_schema` infers what MLflow's own inference gives, column by column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.tracking import window_schema

COLUMNS = {
    "ints": [1, 2, 3], "floats_with_nan": [1.0, np.nan, 2.0], "strings_with_none": ["x", None, "y"],
    "bools": [True, False, True], "mixed": [1, "a", 2.0], "equal_but_not_one_type": [1, 1.0, True],
    "datetimes": pd.to_datetime(["2020-01-01", None, "2020-01-02"]),
    "nullable_ints": pd.array([1, None, 3], dtype="Int64"),
    "strings": ["x", "y", "x"], "lists": [[1], [2], [1]], "categories": pd.Categorical(["a", "b", None]),
}


@pytest.mark.parametrize("name", COLUMNS)
def test_window_schema_is_what_mlflow_infers(name):
    import mlflow.data

    frame = pd.DataFrame({name: COLUMNS[name]})
    assert window_schema(frame) == mlflow.data.from_pandas(frame).schema


def test_window_schema_of_a_whole_frame_and_of_an_empty_one():
    import mlflow.data

    frame = pd.DataFrame({k: v for k, v in COLUMNS.items() if k not in ("mixed", "equal_but_not_one_type")})
    assert window_schema(frame) == mlflow.data.from_pandas(frame).schema
    empty = frame.iloc[0:0]
    assert window_schema(empty) == mlflow.data.from_pandas(empty).schema

"""The baseline a team writes first: FastAPI + the scikit-learn pipeline, one record per POST /predict.

    CT_BENCH_PIPELINE=/path/pipeline.joblib uvicorn benchmarks.plain_sklearn_app:app --workers 2

Used by benchmarks/serving_compare.py; not part of the product.
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import pandas as pd
from fastapi import FastAPI

pipeline = joblib.load(os.environ["CT_BENCH_PIPELINE"])
app = FastAPI()


@app.post("/predict")
def predict(record: dict[str, Any]) -> dict[str, Any]:
    proba = pipeline.predict_proba(pd.DataFrame([record]))[0]
    return {"probability": float(proba[1]), "label": int(proba[1] >= 0.5)}

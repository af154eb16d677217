"""ml.serving: the model server (FastAPI + onnxruntime), its own container image.

`python -m ml.serving` serves one verified ONNX model (see docs/serving.md): /predict,
/predict/batch, /feedback, /health, /ready, /model, /metrics, and logs every prediction for the
next drift check (ml.predlog). `create_app()` builds the ASGI app; settings come from CT_* variables.
"""

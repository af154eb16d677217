"""The serving image's inputs: pinned requirements that match the tested venv, a Dockerfile that runs
the same entrypoint, and a server import path that needs nothing outside those requirements."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SERVING = REPO / "ml" / "serving"


def pins() -> dict[str, str]:
    out = {}
    for line in (SERVING / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            out[re.sub(r"\[.*\]", "", name)] = pinned
    return out


def test_requirements_are_pinned_to_the_tested_versions():
    found = pins()
    assert {"fastapi", "uvicorn", "onnxruntime", "onnx", "numpy", "msgspec", "mlflow-skinny"} <= set(found)
    for name, pinned in found.items():
        assert pinned, f"{name} is not pinned"
        assert version(name) == pinned, f"{name}: requirements pin {pinned}, venv has {version(name)}"


def test_dockerfile_runs_the_tested_entrypoint():
    text = (SERVING / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "ml.serving"]' in text
    assert "ml/serving/requirements.txt" in text and "-c /tmp/constraints.txt" in text
    assert re.search(r"^USER \d+", text, re.M), "the server must not run as root"
    assert "HEALTHCHECK" in text and "/ready" in text
    assert (REPO / "constraints.txt").is_file()


def test_serving_needs_no_training_stack(trained):
    """Loading and scoring in the server imports neither pandas, scikit-learn, evidently nor airflow."""
    code = f"""
import sys
from ml.serving.app import create_app
from ml.serving.model import resolve_model
from ml.serving.settings import Settings
s = Settings(model_uri={str(trained.path)!r})
app = create_app(s, resolve_model(s))
app.state.service.scorer.warm_up()
heavy = sorted(m for m in ("pandas", "sklearn", "evidently", "airflow", "mlflow", "yaml") if m in sys.modules)
print(",".join(heavy))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"serving imported {result.stdout.strip()}"

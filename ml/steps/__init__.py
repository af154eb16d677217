"""The pipeline's steps, grouped like the DAG's task groups: `check` (validate, drift, performance,
decide), `retrain` (train, gates, register) and `release` (deploy, promote).

Every step is a function of a `StepRun` returning its typed result (ml.state.RESULT_TYPES); storing the
result, the attempt bookkeeping and turning outcomes into errors are ml.pipeline's job. A `StepRun` holds
what a step reads, each read once: the run state, the windows of the attempt and the pinned champion.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities.model_registry import ModelVersion

    from ml.config import ModelConfig
    from ml.export import OnnxModel
    from ml.state import RunState
    from ml.tracking import RunContext


@dataclass(frozen=True)
class Windows:
    reference: pd.DataFrame
    current: pd.DataFrame | None


@dataclass
class StepRun:
    """One step invocation: the run's MLflow context and its state, read once and passed down."""

    ctx: RunContext
    state: RunState

    @property
    def config(self) -> ModelConfig:
        return self.ctx.config

    def read(self, path: str) -> pd.DataFrame:
        """A window as every step sees it: the model's columns, without the rows that break the contract
        (ml.contract.screen_window, as validate counted them)."""
        from ml.contract import model_columns, screen_window
        from ml.data import read_window

        window = read_window(path, self.config.target, limits=self.config.data.limits,
                             columns=model_columns(self.config))
        return screen_window(self.config, window)[0].frame

    @cached_property
    def reference(self) -> pd.DataFrame:
        """The reference window (data.reference, or its override)."""
        return self.read(self.config.reference_path)

    @cached_property
    def current(self) -> pd.DataFrame | None:
        """The attempt's current window. A live prediction log is read from the snapshot validate froze into
        the run, so every step of the attempt sees the rows the contract checked."""
        validation = self.state.validation
        if validation is not None and validation.current_snapshot:
            return self.read(str(self.ctx.artifact(validation.current_snapshot)))
        path = self.config.current_path
        return self.read(path) if path else None

    def release_windows(self) -> None:
        """Forget the windows read so far: a step that has taken what it needs from them frees their memory
        (they are read again on next use)."""
        import gc

        import pyarrow as pa

        for name in ("reference", "current"):
            self.__dict__.pop(name, None)
        gc.collect()  # a frame can sit in a reference cycle: freed only by the collector
        pa.default_memory_pool().release_unused()  # a Parquet window's columns are Arrow's memory

    @property
    def windows(self) -> Windows:
        """Both windows (each read once per step, on first use)."""
        return Windows(self.reference, self.current)

    @cached_property
    def champion(self) -> ModelVersion | None:
        """The registry's record of the champion this attempt compares with (pinned by validate)."""
        version = self.state.champion_version
        return None if version is None else self.ctx.client.get_model_version(self.config.name, version)

    @cached_property
    def champion_model(self) -> OnnxModel | None:
        """The pinned champion's ONNX model (sha256-verified, cached under $CT_HOME/cache)."""
        from ml.export import OnnxModel
        from ml.registry import fetch_onnx
        from ml.tracking import ct_home

        version = self.state.champion_version
        if version is None:
            return None
        path, sha = fetch_onnx(self.ctx.client, self.config.name, version,
                               ct_home() / "cache" / self.config.name / f"v{version}")
        return OnnxModel.load(path, expected_sha256=sha)


#: The current window frozen into a run: validate does it for a live prediction log, train for any window
#: (what `drift.reference: champion` compares with once that challenger serves).
SNAPSHOT = "windows/current.parquet"


def snapshot_current(ctx: RunContext, current: pd.DataFrame) -> tuple[str, str]:
    """Freeze a current window into the run: (artifact path, sha256 of the frozen file)."""
    from pathlib import Path

    from ml.data import sha256_of

    path = ctx.work_dir / SNAPSHOT
    path.parent.mkdir(parents=True, exist_ok=True)
    current.to_parquet(path, index=False)  # 20x smaller than JSON lines at a million rows
    ctx.log_artifact(path, str(Path(SNAPSHOT).parent))
    return SNAPSHOT, sha256_of(path)

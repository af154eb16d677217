"""Deploy targets: `local` (a process on 127.0.0.1) and `kubernetes` (the deployer in a pod, which
patches the serving Deployment: ml.deploy.kubernetes).

`ml.deploy.rollout.rollout(config, version, records)` puts a registered version into service on the
configured target. Both targets report a `DeployResult` (defined here) and call one smoke check,
`SmokeCheck(url, version, sha256)`, for whichever version should be answering at that moment (the new
one, or the one restored).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ml.deploy.smoke import SmokeResult
from ml.errors import DeployError
from ml.result import Result

#: (base URL, version that should answer, its sha256 or None when the target pins none) -> result.
SmokeCheck = Callable[[str, str, "str | None"], SmokeResult]

DeployStatus = Literal["deployed", "unchanged", "rolled_back", "failed"]


@dataclass(frozen=True)
class DeployResult(Result):
    """The deploy step's result, whatever the target."""

    summary_fields = ("target", "version", "previous_version", "status", "rolled_back", "url", "detail")

    target: str
    version: str
    previous_version: str | None
    status: DeployStatus
    rolled_back: bool
    url: str | None
    detail: str
    smoke: dict[str, Any] | None = None
    #: "canary" | "shadow" when the version was started beside the champion (deploy.strategy), None otherwise
    rollout: str | None = None

    @property
    def ok(self) -> bool:
        """The version is serving (newly, or it already was)."""
        return self.status in ("deployed", "unchanged")

    def stop_error(self) -> DeployError | None:
        return None if self.ok else DeployError(f"deploy {self.status}: {self.detail}")

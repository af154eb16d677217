"""Project errors: one base class, one subclass per kind of failure.

Every message names the offending thing (key, column, gate, version) and says what to do, because
these messages end up as the failure text of an Airflow task or a CLI exit.
"""

from __future__ import annotations


class CTError(Exception):
    """Base class of every error this project raises on purpose."""

    #: Whether retrying the same step can help (network, registry races). Bad input never can.
    retryable: bool = False


class ConfigError(CTError):
    """The model config file is missing, unreadable or violates the config contract."""


class DataError(CTError):
    """A data window cannot be read (missing file, unknown format, unreadable content)."""


class ContractError(CTError):
    """A data window violates the data contract; `problems` lists every violation found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class TrainingError(CTError):
    """Training or ONNX export failed."""


class GateError(CTError):
    """Validation gates could not be evaluated (not: a gate that evaluated to 'failed')."""


class RegistryError(CTError):
    """The MLflow registry is in a state the operation cannot work with."""

    retryable = True


class DeployError(CTError):
    """Deploying, smoke-testing or rolling back a model version failed."""


class StateError(CTError):
    """A step needs the result of an earlier step of the same run, and it is missing."""


class GatesFailed(GateError):
    """At least one gate failed: the challenger is rejected (not registered)."""


class ChallengerRejected(GatesFailed):
    """The challenger was rejected while the champion is healthy: the champion stays. The run stops here
    (nothing is registered), but it decided correctly: Airflow skips the rest instead of failing."""


class StepKilled(CTError):
    """A step's process was killed (or died) before the step stored its result."""

    retryable = True


class StepFailed(CTError):
    """A step raised an error that is not one of the project's own (a bug, an unreachable server); it is
    rebuilt under this type, with the original type in the message, wherever the failure is read back."""

    retryable = True  # the unexpected ones are infrastructure far more often than bad input


def _subclasses(cls: type[CTError]) -> list[type[CTError]]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def rebuild_error(type_name: str, message: str, retryable: bool) -> CTError:
    """The error a stored failure stands for: the project error class of that name (so a step that failed
    in a pod fails the Airflow task the way it would have in the worker), else StepFailed."""
    known = {cls.__name__: cls for cls in _subclasses(CTError)}
    cls = known.get(type_name)
    error = cls(message) if cls is not None else StepFailed(f"{type_name}: {message}" if type_name else message)
    error.retryable = retryable
    return error

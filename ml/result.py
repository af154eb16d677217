"""The shape every step result shares: a frozen dataclass that turns into JSON and back, and a summary.

Step results cross process boundaries (a Kubernetes pod, a Databricks job, the next Airflow task)
as JSON in the run's MLflow state. `Result.to_dict` is that JSON; `Result.from_dict` rebuilds the
typed value, nested dataclasses included (from the field annotations), and ignores keys that are
computed properties (`GateReport.passed`) so `from_dict(to_dict(x)) == x`. `summary()` is the small
part worth showing in XCom and logs, named once per type by `summary_fields`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from ml.errors import CTError


class Result:
    """Mixin for frozen dataclasses that are step results (or parts of one)."""

    #: The fields shown in XCom and logs; the whole result is in the MLflow run state.
    summary_fields: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        hints = _hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: _build(hints[k], v) for k, v in data.items() if k in fields})

    def summary(self) -> dict[str, Any]:
        data = self.to_dict()
        return {k: data[k] for k in self.summary_fields if k in data}

    def stop_error(self) -> CTError | None:
        """The error that stops the run although the step completed: a failed contract, gate or deploy."""
        return None


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(hint: Any, value: Any) -> Any:
    """`value` (plain JSON) as the type `hint` names: dataclasses (Result), dicts and lists of them."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _build(options[0], value) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Result):
        return hint.from_dict(value)
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: _build(item, v) for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_build(item, v) for v in value]
    return value

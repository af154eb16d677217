"""The rollout DAG's operator: one look at the model's running canary or shadow (ml.rollout_checks.check_rollout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from ct_airflow.operators import fail_task

if TYPE_CHECKING:
    from airflow.sdk import Context


class RolloutCheckOperator(BaseOperator):
    """Evaluate the running canary (promote it or roll it back once the test decides, or at once when a
    guardrail breaks) or compare the running shadow with the champion; nothing running is a green no-op.

    :param config_path: the model config (templated)
    """

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#e3f1d6"

    def __init__(self, *, config_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context: Context) -> dict[str, Any]:
        from ml.config import load_config
        from ml.rollout_checks import check_rollout

        try:
            result = check_rollout(load_config(self.config_path))
        except Exception as exc:
            fail_task(exc)
        self.log.info("rollout of %s: %s", result["model"], result)
        return result

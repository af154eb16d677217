"""`promotion.approval: required`: a person approves a registered challenger before it is deployed and promoted.

`PromotionApprovalOperator` is Airflow's human-in-the-loop `ApprovalOperator` (providers.standard) placed
between `register` and the release. When it runs it records the request (`approve` step, `pending`) and
shows, in the UI's *Required Actions* (or `GET .../hitlDetails` of the REST API), the version, the
decision that led to it and every gate. The answer comes from the UI or from
`PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails`
(`{"chosen_options": ["Approve"]}` or `["Reject"]`); it is recorded with who answered and when, in the run
state and so in the run record. *Approve* lets the release run (deploy, smoke test, then `champion`
moves); *Reject*, or no answer within `promotion.approval_timeout_h` (the default option is *Reject*),
skips it: the old champion keeps serving, the version stays the registered `challenger`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from ct_airflow.links import MlflowRunLink, ModelVersionLink
from ct_airflow.operators import RUN_FIELDS, PipelineOperator, fail_task, note_version_link

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ml.registry import ApprovalDecision


def answer(event: dict[str, Any]) -> tuple[ApprovalDecision, str | None, str | None]:
    """(decision, who, when) from the event Airflow resumes the task with (a person's answer, or the
    timeout sweep's default, which carries no user)."""
    if "error" in event:
        return ("timed_out" if event.get("error_type") == "timeout" else "rejected"), None, None
    user = event.get("responded_by_user") or {}
    by = (user.get("name") or user.get("id")) if isinstance(user, dict) else str(user)
    at = event.get("responded_at")
    at_text = at.isoformat() if isinstance(at, datetime) else (str(at) if at else None)
    if event.get("chosen_options") == [ApprovalOperator.APPROVE]:
        return "approved", by, at_text
    return ("timed_out" if event.get("timedout") else "rejected"), by, at_text


class PromotionApprovalOperator(PipelineOperator, ApprovalOperator):
    """Ask a person to approve the challenger this run registered; record the answer (`approve` step).

    :param subject: headline of the request; the model and version are added at run time (templated)
    :param response_timeout: how long to wait; then the default option (Reject) applies
    """

    template_fields: Sequence[str] = (*RUN_FIELDS, "subject", "body")
    operator_extra_links = (MlflowRunLink(), ModelVersionLink())
    ui_color = "#fdf2c4"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Promote the challenger?")
        kwargs.setdefault("defaults", ApprovalOperator.REJECT)  # no answer in time = not promoted
        super().__init__(**kwargs)

    def execute(self, context: Context) -> Any:
        from ml.decision import Decision
        from ml.explain import approval_body
        from ml.gates import GateReport
        from ml.pipeline import run_step
        from ml.registry import Registration
        from ml.state import RunState, Step

        try:
            ctx = self.run_context()
            state = RunState.load(ctx)
            version = state.require(Step.REGISTER, Registration).version
            self.subject = f"Promote {ctx.config.name} v{version}?"
            self.body = approval_body(model=ctx.config.name, version=version,
                                      decision=state.get(Step.DECIDE, Decision),
                                      report=state.require(Step.GATES, GateReport), validation=state.validation)
            run_step("approve", ctx, state=state, decision="pending", detail=f"waiting for approval: {self.subject}")
        except Exception as exc:
            fail_task(exc)
        note_version_link(self, ctx.config.name, version)
        return super().execute(context)  # waits (awaiting_input) until answered or timed out

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        from ml.pipeline import run_step

        decision, by, at = answer(event)
        try:
            ctx = self.run_context()
            record = run_step("approve", ctx, decision=decision, by=by, at=at,
                              detail=f"{decision} by {by or 'nobody (timeout)'} at {at or 'the deadline'}")
        except Exception as exc:
            fail_task(exc)
        note_version_link(self, ctx.config.name, getattr(record.result, "version", None))
        self.log.info("approval of %s: %s", ctx.config.name, record.result.summary() if record.result else decision)
        return super().execute_complete(context, event)  # Reject: skips the release

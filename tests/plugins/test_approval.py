"""The approval task: Airflow's ApprovalOperator, with the answer recorded as the run's `approve` step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ct_airflow.approval import PromotionApprovalOperator, answer


def test_answers_map_to_who_decided_and_when():
    at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    user = {"id": "admin", "name": "admin"}
    assert answer({"chosen_options": ["Approve"], "responded_at": at, "responded_by_user": user}) == \
        ("approved", "admin", at.isoformat())
    assert answer({"chosen_options": ["Reject"], "responded_at": at, "responded_by_user": user})[0] == "rejected"
    # the scheduler's timeout sweep applies the default (Reject) with no user
    assert answer({"chosen_options": ["Reject"], "responded_at": at, "responded_by_user": None,
                   "timedout": True}) == ("timed_out", None, at.isoformat())
    assert answer({"error": "no response", "error_type": "timeout"}) == ("timed_out", None, None)


def test_the_operator_only_assigns_and_defaults_to_reject():
    op = PromotionApprovalOperator(task_id="approve", config_path="{{ params.x }}",
                                   response_timeout=timedelta(hours=2))
    assert op.config_path == "{{ params.x }}" and op.run_key == "{{ run_id }}"
    assert op.options == ["Approve", "Reject"] and op.defaults == ["Reject"]
    assert op.response_timeout == timedelta(hours=2)
    assert {"config_path", "run_key", "subject", "body"} <= set(op.template_fields)
    assert {link.name for link in op.operator_extra_links} == {"MLflow run", "Model version"}

"""The Markdown people read in the Airflow and MLflow UIs (ml.explain): pure functions of typed results."""

from __future__ import annotations

from ml.explain import approval_body, gate_table, run_note, version_description
from ml.state import Step
from tests.ml.test_state import EXAMPLES


def test_the_gate_table_shows_every_gate_and_escapes_cells():
    table = gate_table({"size": {"passed": False, "value": 60.0, "threshold": 50.0, "detail": "a | b"},
                        "latency": {"passed": True, "value": 0.0312, "threshold": 10.0, "detail": "p99"}})
    lines = table.splitlines()
    assert lines[0] == "| gate | result | value | threshold | detail |" and lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| size | **FAIL** | 60 | 50 | a \\| b |"
    assert lines[3] == "| latency | pass | 0.0312 | 10 | p99 |"
    assert gate_table({}) == "_no gates were evaluated_"


def test_the_version_description_holds_decision_gates_and_data():
    text = version_description(run_key="run-1", mlflow_run_id="abc", decision=EXAMPLES[Step.DECIDE],
                               report=EXAMPLES[Step.GATES], validation=EXAMPLES[Step.VALIDATE],
                               trained=EXAMPLES[Step.TRAIN], drift=EXAMPLES[Step.DRIFT],
                               config_file="/c/m.yaml", config_sha256="f" * 64)
    assert text.startswith("**Decision:** retrain: drift")
    assert "| min_roc_auc | pass | 0.81 | 0.7 | ok |" in text and "judged against champion v1" in text
    assert "| current | – | 5 | `bbbbbbbbbbbb` |" in text
    assert "logistic_regression on 90 rows" in text and "roc_auc 0.8100" in text
    assert "drifted: x" in text and "`/c/m.yaml` (sha256 `ffffffffffff`" in text


def test_the_approval_request_says_what_approving_does():
    body = approval_body(model="m", version="2", decision=EXAMPLES[Step.DECIDE], report=EXAMPLES[Step.GATES],
                         validation=EXAMPLES[Step.VALIDATE])
    assert body.startswith("Approving deploys **m v2** (smoke-tested) and then moves `champion` to it.")
    assert "the current champion (v1) keeps serving" in body and "v2 stays the registered `challenger`" in body
    assert "| size | **FAIL** | 60 | 50 | too big |" in body and "**Decision:** retrain: drift" in body


def test_the_run_note_leads_with_the_outcome():
    from ml.record import build_record
    from tests.ml.test_record import state, through

    note = run_note(build_record(state(*through(Step.PROMOTE)), model="m", run_id="r"))
    first, facts = note.split("\n\n")[:2]
    assert first == "**promoted** · decision **retrain**: drift"
    assert facts.startswith("challenger v2 · champion → v2 · gates 1/1 passed · approval approved by admin")
    assert facts.endswith("deploy deployed at http://127.0.0.1:1")

"""`python -m ml shadow | canary | shadow-report` as users call them: JSON on stdout, clear errors, exit codes."""

from __future__ import annotations

import json

from tests.ml.test_cli import ml


def test_rollout_commands_refuse_what_cannot_be_done(config_path, tmp_path):
    home = tmp_path / "ct"
    no_version = ml("canary", "start", "--config", str(config_path), home=home)
    assert no_version.returncode == 2 and "canary start needs --version N" in no_version.stderr
    no_champion = ml("shadow", "start", "--version", "1", "--config", str(config_path), home=home)
    assert no_champion.returncode == 1 and "has no champion: a shadow or canary runs beside one" in no_champion.stderr
    nothing = ml("canary", "evaluate", "--config", str(config_path), home=home)
    assert nothing.returncode == 1 and "no canary is running for 'employee-attrition'" in nothing.stderr
    status = ml("canary", "status", "--config", str(config_path), home=home)
    assert status.returncode == 0 and json.loads(status.stdout) == {"model": "employee-attrition", "rollout": None}
    bad = ml("canary", "frobnicate", "--config", str(config_path), home=home)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_shadow_report_of_a_log_without_a_shadow_is_empty(config_path, tmp_path):
    log = tmp_path / "log"
    (log / "predictions" / "date=2026-12-01").mkdir(parents=True)
    line = {"prediction_id": "a" * 32, "timestamp": "2026-12-01T10:00:00+00:00", "model_version": "1",
            "features": {}, "output": {"label": "0", "probabilities": {"0": 0.7, "1": 0.3}}}
    (log / "predictions" / "date=2026-12-01" / "h-1.jsonl").write_text(json.dumps(line) + "\n")
    out = ml("shadow-report", "--config", str(config_path), "--current", str(log), home=tmp_path / "ct")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["rows"], report["shadow_version"], report["log"]) == (0, None, str(log))

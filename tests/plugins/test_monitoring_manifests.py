"""The monitoring manifests (deploy/k8s/monitoring: PrometheusRule, ServiceMonitor) and the Grafana dashboard
(deploy/grafana): every metric they name is one the model server really exports (the names come from a real
`Metrics(...).render()` exposition, not a list), the rules pass `promtool check rules` and promtool's unit
tests (tests/plugins/data/prometheus-rules-test.yaml: each alert fires on the series it is meant for and not
below its threshold), and every dashboard query parses as PromQL (promtool, as recording rules)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

MONITORING = REPO / "deploy" / "k8s" / "monitoring"
DASHBOARD = REPO / "deploy" / "grafana" / "ct-serving-dashboard.json"
RULES_TEST = Path(__file__).parent / "data" / "prometheus-rules-test.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

#: PromQL words that are not metric names (keywords, aggregation modifiers)
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan"}


def exported_names() -> set[str]:
    """Sample names of a real /metrics exposition of the server (histograms: _bucket, _sum, _count)."""
    from prometheus_client.parser import text_string_to_metric_families

    from ml.serving.metrics import Metrics

    metrics = Metrics({"name": "m", "version": "1", "sha256": "0" * 64})
    metrics.observe("/predict", 200, 0.001)
    metrics.count_prediction("1")
    names = {s.name for f in text_string_to_metric_families(metrics.render()) for s in f.samples}
    assert {"ct_http_requests_total", "ct_http_request_duration_seconds_bucket", "ct_predictions_total"} <= names
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label matchers, range
    brackets and grouping clauses that are not function calls or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                   # strings
    text = re.sub(r"\{[^}]*\}", "", text)                            # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                           # ranges, subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])?", " ", text)  # numbers, durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(0), text[match.end():].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def rule_document() -> dict:
    (doc,) = [d for d in yaml.safe_load_all((MONITORING / "prometheus-rules.yaml").read_text()) if d]
    return doc


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return exprs + [a["expr"] for a in dashboard["annotations"]["list"] if a.get("expr")]


def test_metric_name_extraction() -> None:
    expr = ('sum by (job, le) (rate(ct_a_bucket{endpoint="/p{x}"}[5m])) / ignoring (class) group_left '
            'ct_b offset 5m > bool 0.5 and on (job) absent(ct_c)')
    assert metric_names(expr) == {"ct_a_bucket", "ct_b", "ct_c"}


def test_prometheus_rule_shape_and_metric_names() -> None:
    doc = rule_document()
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    rules = [r for g in doc["spec"]["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {"CTServingHighErrorRate", "CTServingHighLatencyP99", "CTPredictionLogDropping",
            "CTPredictionDistributionShift"} <= set(alerts)
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
    unknown = {n for r in rules for n in metric_names(r["expr"])} - exported_names() - recorded
    assert unknown == set(), f"rules select metrics the server does not export: {unknown}"


def test_service_monitor_scrapes_the_serving_service() -> None:
    (monitor,) = [d for d in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()) if d]
    service = yaml.safe_load((REPO / "deploy" / "k8s" / "serving-service.yaml").read_text())
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == ["prometheus-rules.yaml", "servicemonitor.yaml"]


@needs_promtool
def test_promtool_checks_the_rules_and_their_unit_tests(tmp_path: Path) -> None:
    spec = rule_document()["spec"]
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(spec))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "full.yaml")], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for group in spec["groups"]:  # unit tests check firing and labels; the annotations are checked above
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(RULES_TEST, tmp_path / "test.yaml")
    tested = subprocess.run([PROMTOOL, "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_dashboard_refers_to_exported_metrics_only() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    unknown = {n for e in exprs for n in metric_names(e)} - exported_names()
    assert unknown == set(), f"dashboard queries select metrics the server does not export: {unknown}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert re.search(r"label_values\((ct_[a-z_]+)", variable["definition"])[1] in exported_names()


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    grafana = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*"}
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:q{i}", "expr": expr})
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "dashboard.yaml")], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

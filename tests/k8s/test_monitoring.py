"""The dashboard and the alert rules in k8s/monitoring: valid, and about metrics that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams import metrics
from streams.web.observability import FaustSensor
from tests.support import REPO

MONITORING = REPO / "k8s" / "monitoring"
RULES = MONITORING / "ledgerflow-alerts.yaml"
DASHBOARD = MONITORING / "ledgerflow-dashboard.json"
METRIC_NAME = re.compile(r"\b(ledgerflow_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exposed_names() -> set[str]:
    """Every series name a worker exposes (families without samples yet included)."""
    faust = CollectorRegistry()
    FaustSensor(faust)
    text = metrics.exposition()[0].decode() + generate_latest(faust).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def rules() -> list[dict[str, str]]:
    """Each rule's top-level keys and those of its labels and annotations, as text. A reader
    for this file's own layout (promtool checks the YAML itself; PyYAML is not a dependency):
    `key: value` or `key: >-` followed by more deeply indented lines."""
    out: list[dict[str, str]] = []
    lines = RULES.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        found = re.match(r"^(\s*)(?:- )?(\w+):\s*(.*)$", line)
        if not found or line.lstrip().startswith("#"):
            continue
        indent, key, text = len(found.group(1)), found.group(2), found.group(3).strip()
        if key == "alert":
            out.append({})
        if text in (">-", "|", ">"):
            block = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
            ):
                block.append(lines[i].strip())
                i += 1
            text = " ".join(b for b in block if b)
        if out and text:
            out[-1][key] = text.strip('"')
    return out


def rule_exprs() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in rules()]


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (make tools)")
def test_promtool_accepts_the_alert_rules() -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in check.stdout


def test_the_rules_alert_on_what_operations_needs() -> None:
    exprs = " ".join(expr for _, expr in rule_exprs())
    for metric in (
        "ledgerflow_exceptions_oldest_open_age_seconds",
        "ledgerflow_dlq_entries_total",
        "ledgerflow_consumer_lag_messages",
        "ledgerflow_erp_failures_total",
        "ledgerflow_circuit_breaker_state",
    ):
        assert metric in exprs, metric
    for rule in rules():
        assert rule["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["summary"] and rule["description"] and rule["for"], rule["alert"]


def test_every_metric_in_the_rules_and_the_dashboard_is_exposed() -> None:
    exposed = exposed_names()
    used = {
        (where, name)
        for where, expr in [*rule_exprs(), *dashboard_exprs()]
        for name in METRIC_NAME.findall(expr)
    }
    assert used
    missing = sorted((where, name) for where, name in used if name not in exposed)
    assert not missing, missing


def test_the_dashboard_covers_the_pipeline_and_is_well_formed() -> None:
    dashboard: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in (
        "throughput",
        "lag",
        "erp call latency",
        "error rate",
        "open exceptions",
        "oldest",
        "dead-letter",
        "circuit breaker",
    ):
        assert topic in titles, topic
    exprs = " ".join(expr for _, expr in dashboard_exprs())
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]

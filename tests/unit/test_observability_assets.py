"""The Grafana dashboard and the Prometheus alert rules in deploy/observability/ load, and every metric
they name is one the services serve (the exposition of shared.observability's registry, which every
API's /metrics and every worker's endpoint render), with the labels they group by."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.observability import DEFINITIONS, metrics

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = ROOT / "dashboards" / "membership.json"
ALERTS = ROOT / "alerts.yml"

_METRIC = re.compile(r"\b((?:membership|process)_[a-z0-9_]+)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\b((?:membership|process)_[a-z0-9_]+)\{([^}]*)\}")
#: what Prometheus itself adds to every scraped series
_TARGET_LABELS = {"job", "instance"}


def _exposed() -> dict[str, set[str]]:
    """Every sample name the services can serve, with its label names: a counter's ``_total``, a
    histogram's ``_bucket`` (with ``le``), ``_count`` and ``_sum``, a gauge; and the process metrics."""
    names: dict[str, set[str]] = {}
    for name, d in DEFINITIONS.items():
        full, labels = f"membership_{name}", set(d.labels) | _TARGET_LABELS
        if d.kind == "histogram":
            names[f"{full}_bucket"] = labels | {"le"}
            names[f"{full}_count"] = names[f"{full}_sum"] = labels
        else:
            names[full] = labels
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.startswith("process_"):
                names[sample.name] = set(sample.labels) | _TARGET_LABELS
    return names


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            exprs.extend(t["expr"] for t in p.get("targets", []))

    walk(doc["panels"])
    return exprs


def _alert_exprs() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def test_the_dashboard_loads_with_the_panels_an_operator_watches() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] and isinstance(doc["panels"], list)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " | ".join(p["title"].lower() for p in doc["panels"])
    for wanted in ("requests", "p99 latency per route", "event age", "lag", "outbox backlog", "dead letters"):
        assert wanted in titles, wanted
    assert "tier movements per day" in titles
    for p in doc["panels"]:
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
            grid = p["gridPos"]
            assert grid["x"] + grid["w"] <= 24


def test_the_alert_rules_load_with_what_each_needs() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert len(names) == len(rules), "alert names must be unique"
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
    exprs = " ".join(r["expr"] for r in rules)
    # what the issue asks to be alerted on
    for metric in (
        "membership_consumer_lag",
        "membership_event_age_seconds_bucket",
        "membership_dead_letters_parked",
        "membership_outbox_oldest_age_seconds",
        "membership_http_server_errors_total",
    ):
        assert metric in exprs, metric


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_and_label_they_use_is_served(source: str) -> None:
    exposed = _exposed()
    exprs = _dashboard_exprs() if source == "dashboard" else _alert_exprs()
    assert exprs
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), expr
        used = set(_METRIC.findall(expr))
        assert used, expr
        unknown = used - set(exposed)
        assert not unknown, f"{source} uses metrics no service serves: {sorted(unknown)} in {expr}"
        labels = set().union(*(exposed[m] for m in used))
        for group in _BY.findall(expr):
            grouped = {label.strip() for label in group.split(",") if label.strip()}
            assert grouped <= labels, f"{source} groups by {sorted(grouped - labels)}, not a label of {sorted(used)}"
        for metric, selector in _SELECTOR.findall(expr):
            selected = {m.split("=")[0].strip().rstrip("!~") for m in re.split(r",\s*", selector) if m.strip()}
            assert selected <= exposed[metric], f"{source} selects {sorted(selected - exposed[metric])} on {metric}"


async def test_an_api_serves_the_exposition_the_assets_are_checked_against() -> None:
    """The API's /metrics is this registry's exposition, process metrics included."""
    from tests.unit.test_abuse_limits import _harness

    app = _harness().app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        await client.get("/healthz")
        r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in ("membership_http_request_seconds_bucket", "membership_http_requests_total", "process_cpu_seconds"):
        assert name in r.text, name
    for name in DEFINITIONS:
        assert f"# TYPE membership_{name} " in r.text, name

"""The operations endpoints: every API's health, readiness and metrics, and every worker's own
/metrics, /healthz and /readyz (consumer lag, events consumed, outbox published)."""

from __future__ import annotations

import re

import httpx
import pytest

from devstack.stack import Stack
from shared.settings import SERVICES
from tests.helpers import APP, Api, eventually

pytestmark = pytest.mark.e2e


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of ``membership_<name>{labels...}`` (labels may be a subset), summed over matches."""
    total, seen = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"membership_{name}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total, seen = total + float(m.group(2)), True
    return total if seen else None


def test_every_api_answers_health_readiness_and_metrics(api: Api, stack: Stack) -> None:
    for service in SERVICES:
        base = stack.url(service)
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "service": service}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "broker": True}
    api.get("points", "/v1/members/no-such-member/points", key=APP)
    text = httpx.get(f"{stack.url('points')}/metrics").text
    assert (_metric(text, "http_requests_total", service="points", status="404") or 0) >= 1


def test_every_worker_serves_its_consumer_and_relay_metrics(api: Api, stack: Stack) -> None:
    member = api.enrol()["member_id"]
    api.purchase(member, 100_000)
    eventually(lambda: api.get("points", f"/v1/members/{member}/points", key=APP).json()["balance"] == 2_000)
    stack.wait_settled()
    for service in SERVICES:
        base = f"http://127.0.0.1:{stack.worker_ports[service]}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "service": service, "role": "worker"}
        assert httpx.get(f"{base}/readyz").status_code == 200
        missing = httpx.get(f"{base}/nowhere")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        assert httpx.post(f"{base}/metrics").status_code == 405

    def points_worker() -> str:
        text = httpx.get(f"http://127.0.0.1:{stack.worker_ports['points']}/metrics").text
        assert (_metric(text, "events_consumed_total", service="points") or 0) >= 2  # enrolment, purchase
        # everything is applied: nothing behind on the topic points reads
        assert _metric(text, "consumer_lag", service="points", topic="membership.enrollment") == 0
        return text

    eventually(points_worker, timeout=10)
    enrollment = httpx.get(f"http://127.0.0.1:{stack.worker_ports['enrollment']}/metrics").text
    assert (_metric(enrollment, "outbox_published_total") or 0) >= 2  # the relay published both events

"""One purchase is one trace across the services that handle it (decision 0051).

The five workers and enrollment's API run in this test's process, on the suite's real PostgreSQL and
broker (a stack started with no service processes), so the SDK's in-memory exporter sees every span:
the purchase's request span, then, through the outbox, the relay and Kafka, each consumer's span of
each event the purchase caused (PurchaseRecorded, PointsChanged, TierChanged, ...), all in the
request's trace and each linked to a parent in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from devstack.stack import Stack
from shared import tracing
from shared.service import ServiceDefinition, create_app, run_worker
from shared.settings import SERVICES
from tests.helpers import APP, POS, purchase_body

pytestmark = [pytest.mark.e2e, pytest.mark.services()]  # no service processes: they run in here


def _definition(service: str) -> ServiceDefinition:
    defn: ServiceDefinition = importlib.import_module(f"{service}.service").SERVICE
    return defn


@pytest.fixture
async def traced(stack: Stack) -> AsyncIterator[tuple[InMemorySpanExporter, httpx.AsyncClient]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    settings = stack.settings()
    stop = asyncio.Event()
    workers = [asyncio.create_task(run_worker(_definition(s), settings, stop), name=f"{s}-worker") for s in SERVICES]
    app = create_app(_definition("enrollment"), settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://enrollment")
    try:
        yield exporter, client
    finally:
        await client.aclose()
        stop.set()
        with contextlib.suppress(SystemExit):
            await asyncio.gather(*workers, return_exceptions=True)
        await app.state.ctx.db.dispose()
        tracing.disable()


def _trace_of(spans: Sequence[ReadableSpan], trace_id: int) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and s.context.trace_id == trace_id]


def _handled(spans: Sequence[ReadableSpan]) -> set[tuple[str, str]]:
    """(service, event type) of every consumer span that applied an event."""
    return {
        (str(s.attributes["membership.service"]), str(s.attributes["cloudevents.event_type"]))
        for s in spans
        if s.attributes and "membership.service" in s.attributes and "cloudevents.event_type" in s.attributes
    }


async def test_a_purchase_is_one_trace_across_the_services_that_handle_it(
    traced: tuple[InMemorySpanExporter, httpx.AsyncClient],
) -> None:
    exporter, client = traced
    enrol = await client.post(
        "/v1/members",
        headers={"Authorization": f"Bearer {APP}"},
        json={
            "phone": f"139{time.time_ns() % 100_000_000:08d}",
            "name": "追踪会员",
            "birthday": "1990-06-15",
            "home_clinic_id": "clinic-1",
            "source": "walk_in",
            "consents": {"marketing": True, "sms": True, "email": False},
        },
    )
    assert enrol.status_code == 201, enrol.text
    member = enrol.json()["member_id"]
    # 60,000 yuan: silver at once (tiering), points (points), a care-pack check (benefits), then the tier
    # change to benefits, notify and enrollment's status view
    r = await client.post(
        "/v1/purchases", headers={"Authorization": f"Bearer {POS}"}, json=purchase_body(member, 6_000_000)
    )
    assert r.status_code == 202, r.text

    requests = [
        s
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER and (s.attributes or {}).get("http.route") == "/v1/purchases"
    ]
    assert len(requests) == 1, [(s.name, dict(s.attributes or {})) for s in exporter.get_finished_spans()]
    request = requests[0]
    assert request.context is not None
    trace_id = request.context.trace_id

    wanted = {
        ("points", "PurchaseRecorded"),
        ("tiering", "PurchaseRecorded"),
        ("benefits", "PurchaseRecorded"),
        ("tiering", "PointsChanged"),
        ("enrollment", "PointsChanged"),
        ("benefits", "TierChanged"),
        ("notify", "TierChanged"),
        ("enrollment", "TierChanged"),
    }
    deadline = time.monotonic() + 90
    while True:
        in_trace = _trace_of(exporter.get_finished_spans(), trace_id)
        if wanted <= _handled(in_trace):
            break
        assert time.monotonic() < deadline, f"missing {sorted(wanted - _handled(in_trace))}"
        await asyncio.sleep(0.3)
    await asyncio.sleep(1.0)  # the last spans of the handlers' own children end
    in_trace = _trace_of(exporter.get_finished_spans(), trace_id)

    # every service that handles the purchase took part, in the request's trace
    services = {service for service, _ in _handled(in_trace)}
    assert services == {"enrollment", "points", "tiering", "benefits", "notify"}
    # ... and no span of it is an orphan: each one's parent is a span of the same trace
    ids = {s.context.span_id for s in in_trace if s.context is not None}
    roots = [s for s in in_trace if s.parent is None or s.parent.span_id not in ids]
    assert len(roots) == 1, [(s.name, s.parent) for s in roots]
    assert roots[0] is request or request.parent is not None  # the request span, or the client's above it

    # a consumer span continues the event's traceparent: TierChanged's handlers are children (through the
    # relay's send) of tiering's span of the event that caused the change
    by_id = {s.context.span_id: s for s in in_trace if s.context is not None}

    def ancestors(span: ReadableSpan) -> list[ReadableSpan]:
        chain: list[ReadableSpan] = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            chain.append(span)
        return chain

    notify_span = next(
        s for s in in_trace if (s.attributes or {}).get("membership.service") == "notify" and "TierChanged" in s.name
    )
    chain = ancestors(notify_span)
    assert any((s.attributes or {}).get("membership.service") == "tiering" for s in chain), [s.name for s in chain]
    assert request in chain

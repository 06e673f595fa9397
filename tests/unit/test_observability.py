"""Metrics, readiness and the trace context, without a stack (the whole-pipeline trace is
tests/e2e/test_tracing.py; the dashboard and alert rules tests/unit/test_observability_assets.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider

from shared import tracing
from shared.consumer import ConsumerRunner
from shared.events import PurchaseRecorded, new_event
from shared.observability import metrics
from shared.readiness import BrokerCheck, broker_reachable, readiness
from shared.settings import Settings


def test_events_carry_the_trace_context_only_when_tracing_is_on() -> None:
    data = PurchaseRecorded(
        purchase_id="p", pos_txn_id="t", clinic_id="c", member_id="m", amount_fen=1, occurred_at="2026-01-01T00:00:00Z"
    )
    off = new_event(data, member_id="m", chain_id="c")
    assert off.traceparent is None and b"traceparent" not in off.to_json()
    assert tracing.message_headers(off.to_json().decode()) == []

    provider = TracerProvider()
    tracing.enable(provider)
    try:
        with otel_trace.get_tracer("t", tracer_provider=provider).start_as_current_span("request") as span:
            on = new_event(data, member_id="m", chain_id="c")
        ctx: Any = span.get_span_context()
        assert on.traceparent is not None and on.traceparent.startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
        payload = on.to_json().decode()
        assert b"tracestate" not in on.to_json()
        assert tracing.message_headers(payload) == [("traceparent", on.traceparent.encode())]
        assert tracing.relay_headers(payload) == []  # tracing on: the instrumented producer injects it
    finally:
        tracing.disable()
    assert tracing.relay_headers(payload) == [("traceparent", on.traceparent.encode())]


def test_tracing_is_off_unless_the_otel_variables_ask_for_it() -> None:
    assert not tracing.enabled() and tracing.fastapi_telemetry()["tracing"] is False
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})


def test_a_phone_in_a_query_string_never_reaches_a_span() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        tracer = otel_trace.get_tracer("t", tracer_provider=provider)
        with tracer.start_as_current_span("GET", attributes={"url.query": "phone=13812345678"}):
            pass
    finally:
        tracing.disable()
    (span,) = exporter.get_finished_spans()
    assert "13812345678" not in str((span.attributes or {})["url.query"])


class _StuckConsumer:
    """What refresh_lag asks of an AIOKafkaConsumer whose batch never finishes: the broker's end offsets
    keep growing, nothing is committed."""

    def __init__(self) -> None:
        self.end = 10
        self.tp = TopicPartition("membership.enrollment", 0)

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.end for tp in partitions}

    async def committed(self, tp: TopicPartition) -> int | None:
        return 4


async def test_consumer_lag_keeps_growing_while_the_consumer_is_stuck() -> None:
    runner = ConsumerRunner.__new__(ConsumerRunner)
    runner.service, runner.topics, runner.lag, runner.committed = "stuck-test", ["membership.enrollment"], {}, {}
    runner.settings = Settings(consumer_lag_interval_seconds=0.05)
    consumer = _StuckConsumer()
    stop = asyncio.Event()
    watcher = asyncio.create_task(runner.watch_lag(consumer, stop))  # type: ignore[arg-type]
    await asyncio.sleep(0.15)
    assert metrics.value("consumer_lag", service="stuck-test", topic="membership.enrollment") == 6
    consumer.end = 50  # producers went on; no batch finished
    await asyncio.sleep(0.15)
    assert metrics.value("consumer_lag", service="stuck-test", topic="membership.enrollment") == 46
    assert (metrics.value("consumer_lag_refreshed_timestamp_seconds", service="stuck-test") or 0) > 0
    stop.set()
    await watcher


async def test_an_api_is_ready_with_its_database_while_the_broker_is_away() -> None:
    class Engine:
        def connect(self) -> Any:
            class Conn:
                async def __aenter__(self) -> Any:
                    return self

                async def __aexit__(self, *exc: object) -> None:
                    return None

                async def execute(self, statement: object) -> None:
                    return None

            return Conn()

    broker = BrokerCheck("127.0.0.1:1", "ready-test", max_age=60)
    ok, body = await readiness(Engine(), broker)
    assert ok and body == {"status": "ready", "checks": {"database": True, "broker": False}}
    assert metrics.value("broker_up", service="ready-test") == 0


async def test_the_broker_check_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow_broker(host: str, port: int) -> Any:  # a broker that never answers (only loopback is used)
        await asyncio.sleep(10)

    monkeypatch.setattr(asyncio, "open_connection", slow_broker)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    # the connection attempt waits for its timeout while the loop keeps running
    reachable = await broker_reachable("127.0.0.1:9092", timeout=0.3)
    task.cancel()
    assert reachable is False and ticks >= 10


@pytest.mark.parametrize("name", ["http_requests_total", "consumer_lag", "event_age_seconds"])
def test_the_metrics_are_served_by_prometheus_client(name: str) -> None:
    assert f"# TYPE membership_{name} " in metrics.render()
    assert "process_cpu_seconds_total" in metrics.render()

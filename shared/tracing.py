"""Traces with OpenTelemetry: one purchase is one trace across the five services (decision 0051).

Off by default: no SDK, no exporter, no instrumentation; what the hot paths call here is a flag test
(``enabled()``) and a shared no-op. Switched on by the standard variables, read once when a process
starts (:func:`configure`): ``OTEL_TRACES_EXPORTER=otlp`` (or ``console``), or an
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keep it off. The exporter is OTLP over HTTP/protobuf; the sampler
(``OTEL_TRACES_SAMPLER``), resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and batch
processor (``OTEL_BSP_*``) variables are the SDK's own.

How the context travels, since the relay publishes later and in another context than the request:

* the API's request span is FastAPI's own (its native OpenTelemetry support), and asyncpg and httpx
  are instrumented by the OpenTelemetry packages;
* an event created inside a span (``shared.events.new_event``) carries that span's context in the
  CloudEvents distributed-tracing extension, ``traceparent`` (and ``tracestate``): the outbox row is
  the event's JSON, so the context is committed with it;
* the relay puts it on the Kafka message as W3C headers; with tracing on it sends inside that context,
  so the (instrumented) producer's ``send`` span joins the trace;
* the consumer applies each event inside a span whose parent is the event's ``traceparent``, so what
  its handler publishes is a child of it; work deferred to the end of the batch publishes about a
  member in the trace of the member's last event (:func:`resumed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .phones import redact

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

    from .db import Unit
    from .events import CloudEvent

log = logging.getLogger(__name__)

_W3C = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_instrumentors: list[Any] = []


def enabled() -> bool:
    return _provider is not None


def provider() -> TracerProvider | None:
    """The tracer provider when tracing is on (FastAPI's telemetry is given it), else None."""
    return _provider


def wanted(env: dict[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces (see the module's docstring)."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure(service: str, role: str) -> bool:
    """Switch tracing on for this process when the OTEL_* variables ask for it; True if on."""
    if enabled() or not wanted():
        return enabled()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over these defaults
    resource = Resource.create({"service.name": service, "service.namespace": "membership", "membership.role": role})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    enable(tracer_provider, set_global=True)
    log.info("tracing on", extra={"exporter": type(exporter).__name__})
    return True


def enable(tracer_provider: TracerProvider, *, set_global: bool = False) -> None:
    """Trace into ``tracer_provider``: the redaction processor, the asyncpg, aiokafka and httpx
    instrumentations, and the spans of this module. A test gives it an in-memory exporter's provider."""
    global _provider, _tracer
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    tracer_provider.add_span_processor(_redactor())
    if set_global:
        trace.set_tracer_provider(tracer_provider)
    instrumentors: list[Any] = [AsyncPGInstrumentor(), AIOKafkaInstrumentor(), HTTPXClientInstrumentor()]  # type: ignore[no-untyped-call]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=tracer_provider)
        _instrumentors.append(instrumentor)
    _provider = tracer_provider
    _tracer = tracer_provider.get_tracer("membership")


def disable() -> None:
    """Back to no tracing (the instrumentations removed); for tests."""
    global _provider, _tracer
    for instrumentor in _instrumentors:
        instrumentor.uninstrument()
    _instrumentors.clear()
    if _provider is not None:
        _provider.force_flush()
    _provider, _tracer = None, trace.NoOpTracer()


def fastapi_telemetry() -> TelemetryConfig:
    """FastAPI's own OpenTelemetry settings for a service's app: its request span, into this module's
    provider when tracing is on; nothing at all when it is off (no provider: FastAPI skips its telemetry
    for every request). No spans per dependency and serialisation, no OpenTelemetry logs (the JSON logs
    carry the correlation id)."""
    return {
        "tracer_provider": _provider,
        "tracing": _provider is not None,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
    }


def _redactor() -> SpanProcessor:
    """A phone in a URL's query (``GET /v1/members/lookup?phone=...``) never reaches a trace."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Redact(SpanProcessor):
        def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
            for key in ("url.query", "url.full", "http.target", "http.url"):
                value = (span.attributes or {}).get(key)
                if isinstance(value, str):
                    span.set_attribute(key, redact(value))

        def on_end(self, span: ReadableSpan) -> None:
            pass

    return Redact()


# ---- the context on events and messages ------------------------------------------------------------


def current_trace_context() -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of the current span, for an event being created; (None, None) when
    tracing is off or no span is recording."""
    if _provider is None:
        return None, None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate") or None


def _context_of(traceparent: str | None, tracestate: str | None) -> otel_context.Context | None:
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}
    return _W3C.extract(carrier)


_TRACEPARENT = '"traceparent":"'
_TRACESTATE = '"tracestate":"'


def _field(payload: str, marker: str) -> str | None:
    """A string attribute of an event's JSON, found without parsing the whole document (the relay
    publishes thousands of rows a second). An escaped quote inside a data string cannot look like
    the marker; the envelope's attributes come before ``data``."""
    at = payload.find(marker)
    if at < 0:
        return None
    start = at + len(marker)
    end = payload.find('"', start)
    return payload[start:end] if end > start else None


def message_headers(payload: str) -> list[tuple[str, bytes]]:
    """The W3C trace-context headers of an outbox row's message, from its event's ``traceparent``."""
    traceparent = _field(payload, _TRACEPARENT)
    if traceparent is None:
        return []
    headers = [("traceparent", traceparent.encode())]
    tracestate = _field(payload, _TRACESTATE)
    if tracestate:
        headers.append(("tracestate", tracestate.encode()))
    return headers


def relay_headers(payload: str) -> list[tuple[str, bytes]]:
    """What the relay adds to a row's message. With tracing on, the producer's instrumentation injects
    the context itself (its ``send`` span, a child of the event's context: see :func:`sending`)."""
    return [] if _provider is not None else message_headers(payload)


@contextlib.contextmanager
def sending(payload: str) -> Iterator[None]:
    """Send a row's message inside its event's trace context (tracing on), so the producer's span
    joins the request's trace instead of starting one of its own."""
    ctx = _context_of(_field(payload, _TRACEPARENT), _field(payload, _TRACESTATE)) if _provider is not None else None
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


# ---- the consumer ---------------------------------------------------------------------------------


def event_span(event: CloudEvent[Any], uow: Unit) -> contextlib.AbstractContextManager[Any]:
    """Apply one event inside a span that continues the event's trace (its ``traceparent``), so the
    handler's queries and the events it publishes belong to it. Nothing when tracing is off."""
    if _provider is None:
        return _NOTHING
    return _event_span(event, uow)


@contextlib.contextmanager
def _event_span(event: CloudEvent[Any], uow: Unit) -> Iterator[None]:
    tables = getattr(uow, "tables", None)
    service = str(tables.outbox.schema) if tables is not None else event.data.publisher
    parent = _context_of(event.traceparent, event.tracestate)
    with _tracer.start_as_current_span(
        f"{event.type} process",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "membership.service": service,
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": event.topic,
            "messaging.consumer.group.name": f"membership-{service}",
            "cloudevents.event_id": event.id,
            "cloudevents.event_type": event.type,
            "cloudevents.event_source": event.source,
        },
    ):
        uow.traces[event.subject] = otel_context.get_current()
        yield


@contextlib.contextmanager
def job_span(service: str, name: str) -> Iterator[None]:
    """A scheduled job's run as a trace of its own: the events it publishes continue it."""
    if _provider is None:
        yield
        return
    with _tracer.start_as_current_span(
        f"job {name}", kind=trace.SpanKind.INTERNAL, attributes={"membership.service": service, "membership.job": name}
    ):
        yield


_NOTHING = contextlib.nullcontext()


def resumed(ctx: otel_context.Context | None) -> contextlib.AbstractContextManager[Any]:
    """Make ``ctx`` (a member's last handled event's, :attr:`shared.db.Unit.traces`) current while an
    event is created outside any span: work deferred to the end of a consumer batch (tiering qualifies
    each member once per batch) then publishes in the trace of the event that asked for it."""
    if ctx is None or trace.get_current_span().is_recording():
        return _NOTHING
    return _attached(ctx)


@contextlib.contextmanager
def _attached(ctx: otel_context.Context) -> Iterator[None]:
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)

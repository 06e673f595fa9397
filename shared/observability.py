"""JSON logs with a correlation id, phone numbers redacted, and Prometheus metrics (prometheus_client).

The correlation id comes from the HTTP request (``X-Correlation-Id`` or a new
one) or from the event being handled, and is carried into every event that
request or event causes (``correlationid``/``causationid``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics as _disable_created_metrics

# mainland mobile numbers in any written form, anywhere in a message, never reach a log (shared.phones)
from .phones import mask_phone as mask_phone
from .phones import redact

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


@contextmanager
def correlation_scope(value: str | None) -> Iterator[None]:
    token = correlation_id.set(value)
    try:
        yield
    finally:
        correlation_id.reset(token)


_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid:
            doc["correlation_id"] = cid
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, default=str, ensure_ascii=False))


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    from .health import LAST_ERROR

    root.handlers[:] = [handler, LAST_ERROR]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


#: the text exposition every /metrics answers with (Prometheus text format 0.0.4)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge", "histogram"]

#: HTTP latency: a status GET is ~1-15 ms, a purchase ~5-50 ms; the slow tail up to 10 s
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
#: end to end, from the event's creation (its ``time``) to its consumption; minutes and an hour for a
#: consumer that was down or far behind
EVENT_AGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class Definition:
    kind: Kind
    help: str
    #: label names, sorted (the exposition lists them in this order); every value is bounded: a service,
    #: a topic, a route template, a known method or ``other``, a status, an event type, a table
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


#: every metric of the platform, by its name without the ``membership_`` prefix (the dashboard and the
#: alert rules in deploy/observability/ use these names; tests/unit/test_observability_assets.py checks)
DEFINITIONS: dict[str, Definition] = {
    # the edge (shared.edge): every request of every API
    "http_requests_total": Definition(
        "counter", "HTTP requests by route template and status", ("method", "path", "service", "status")
    ),
    "http_request_seconds": Definition(
        "histogram", "HTTP request duration by route template", ("method", "path", "service"), LATENCY_BUCKETS
    ),
    "http_server_errors_total": Definition("counter", "HTTP 5xx answers", ("path", "service", "status")),
    # the consumer (shared.consumer)
    "events_consumed_total": Definition("counter", "Messages read and settled by the consumer", ("service",)),
    "events_skipped_total": Definition(
        "counter", "Messages of types the consumer does not handle", ("reason", "service")
    ),
    "events_dead_lettered_total": Definition("counter", "Messages sent to a dead-letter topic", ("service",)),
    "consumer_batch_seconds": Definition(
        "histogram", "Time to apply one consumer batch", ("service",), BATCH_SECONDS_BUCKETS
    ),
    "consumer_batch_size": Definition("histogram", "Messages in one consumer batch", ("service",), BATCH_SIZE_BUCKETS),
    "event_age_seconds": Definition(
        "histogram",
        "Age of an event when its consumer applied it (now - the event's time): end-to-end latency",
        ("service", "topic"),
        EVENT_AGE_BUCKETS,
    ),
    "consumer_lag": Definition(
        "gauge",
        "Messages behind the end of the topic (end offsets - committed), refreshed on a timer",
        ("service", "topic"),
    ),
    "consumer_lag_refreshed_timestamp_seconds": Definition(
        "gauge", "When consumer_lag was last measured against the broker (unix time)", ("service",)
    ),
    # the outbox (shared.outbox, shared.db) and pipeline gauges (shared.health)
    "outbox_published_total": Definition("counter", "Outbox rows the relay published", ("service",)),
    "events_published_total": Definition("counter", "Events committed to the outbox, by type", ("service", "type")),
    "tier_changes_total": Definition(
        "counter", "TierChanged events committed, by direction and reason", ("direction", "reason")
    ),
    "outbox_backlog": Definition("gauge", "Unpublished outbox rows", ("service",)),
    "outbox_oldest_age_seconds": Definition("gauge", "Age of the oldest unpublished outbox row", ("service",)),
    "dead_letters_parked": Definition("gauge", "Dead letters parked (all chains)", ("service",)),
    "broker_up": Definition("gauge", "1 when the broker answered the last readiness check", ("service",)),
    "retention_deleted_total": Definition("counter", "Rows purged by retention", ("service", "table")),
    "notifications_skipped_total": Definition("counter", "Notifications not sent, by reason", ("reason",)),
}


class Metrics:
    """The platform's metrics, registered in prometheus_client's registry (with its process metrics).

    ``inc``/``set``/``observe`` take a metric's name without the ``membership_`` prefix and its label
    values; a name missing from :data:`DEFINITIONS` is a KeyError (a typo is not a new metric)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self._metrics: dict[str, Any] = {}
        for name, d in DEFINITIONS.items():
            full = f"membership_{name}"
            if d.kind == "counter":
                self._metrics[name] = Counter(full, d.help, d.labels, registry=registry)
            elif d.kind == "gauge":
                self._metrics[name] = Gauge(full, d.help, d.labels, registry=registry)
            else:
                self._metrics[name] = Histogram(full, d.help, d.labels, registry=registry, buckets=d.buckets)

    def child(self, name: str, **labels: str) -> Any:
        """The labelled series (to call ``inc``/``set``/``observe`` on several times)."""
        return self._metrics[name].labels(**labels)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self._metrics[name].labels(**labels).inc(value)

    def set(self, name: str, value: float, **labels: str) -> None:
        self._metrics[name].labels(**labels).set(value)

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._metrics[name].labels(**labels).observe(value)

    def render(self) -> str:
        return generate_latest(self.registry).decode()

    def value(self, sample: str, **labels: str) -> float | None:
        """A sample's value, e.g. ``value("http_requests_total", ...)`` or ``value("consumer_batch_seconds_count",
        service=...)``; None when the series does not exist."""
        return self.registry.get_sample_value(f"membership_{sample}", labels)

    def series(self, **having: str) -> int:
        """How many labelled series of the platform's metrics carry all of ``having`` (bucket lines not
        counted apart): what the label bounds keep from growing."""
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for metric in self._metrics.values():
            for family in metric.collect():
                for s in family.samples:
                    labels = {k: v for k, v in s.labels.items() if k != "le"}
                    if all(labels.get(k) == v for k, v in having.items()):
                        seen.add((family.name, tuple(sorted(labels.items()))))
        return len(seen)


_disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series: half the lines, nothing a dashboard uses
metrics = Metrics()


def observe_batch(service: str, *, size: int, seconds: float, ages: Iterable[tuple[str, float]] = ()) -> None:
    """A settled consumer batch: its size and duration, and each applied event's age (topic, seconds)."""
    metrics.inc("events_consumed_total", size, service=service)
    metrics.observe("consumer_batch_seconds", seconds, service=service)
    metrics.observe("consumer_batch_size", size, service=service)
    children: dict[str, Any] = {}
    for topic, age in ages:
        child = children.get(topic)
        if child is None:
            child = children[topic] = metrics.child("event_age_seconds", service=service, topic=topic)
        child.observe(max(0.0, age))


def count_committed(service: str, events: Iterable[Any]) -> None:
    """Events a unit of work committed to its outbox: by type, and tier movements by direction."""
    by_type: Tally[str] = Tally()
    tiers: Tally[tuple[str, str]] = Tally()
    for e in events:
        by_type[e.type] += 1
        if e.type == "TierChanged":
            tiers[(e.data.direction, e.data.reason)] += 1
    for event_type, n in by_type.items():
        metrics.inc("events_published_total", n, service=service, type=event_type)
    for (direction, reason), n in tiers.items():
        metrics.inc("tier_changes_total", n, direction=direction, reason=reason)

"""JSON logs with a correlation id, phone numbers redacted, and Prometheus metrics.

The correlation id comes from the HTTP request (``X-Correlation-Id`` or a new
one) or from the event being handled, and is carried into every event that
request or event causes (``correlationid``/``causationid``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

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


class Metrics:
    """A small Prometheus registry: counters, gauges and summaries (count/sum), labelled."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.sums: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = defaultdict(lambda: [0, 0.0])
        self.gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self.gauges[(name, tuple(sorted(labels.items())))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            entry = self.sums[(name, tuple(sorted(labels.items())))]
            entry[0] += 1
            entry[1] += value

    def render(self) -> str:
        def fmt(labels: tuple[tuple[str, str], ...]) -> str:
            if not labels:
                return ""
            return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"

        lines: list[str] = []
        with self._lock:
            for name in sorted({n for n, _ in self.counters}):
                lines.append(f"# TYPE membership_{name} counter")
                for (n, labels), v in sorted(self.counters.items()):
                    if n == name:
                        lines.append(f"membership_{n}{fmt(labels)} {v}")
            for name in sorted({n for n, _ in self.gauges}):
                lines.append(f"# TYPE membership_{name} gauge")
                for (n, labels), v in sorted(self.gauges.items()):
                    if n == name:
                        lines.append(f"membership_{n}{fmt(labels)} {v}")
            for name in sorted({n for n, _ in self.sums}):
                lines.append(f"# TYPE membership_{name} summary")
                for (n, labels), (count, total) in sorted(self.sums.items()):
                    if n == name:
                        lines.append(f"membership_{n}_count{fmt(labels)} {count}")
                        lines.append(f"membership_{n}_sum{fmt(labels)} {total}")
        return "\n".join(lines) + "\n"


metrics = Metrics()

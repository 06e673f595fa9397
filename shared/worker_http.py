"""A worker's operations endpoint: ``/metrics`` (Prometheus text), ``/healthz``, ``/readyz``, ``/status``.

Workers have no web framework to hang these on, and need none: this is a few lines of
asyncio serving GET requests, so a scraper sees the consumer's lag, dead letters, relay and
retention counters, and an orchestrator can probe the process. Not for the public internet:
bind it to the pod network (``MEMBERSHIP_HOST``) as the API's /metrics is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .observability import metrics

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _problem(status: int, title: str) -> bytes:
    doc = {"type": "about:blank", "title": title, "status": status}
    return _response(status, json.dumps(doc).encode(), "application/problem+json")


async def serve(
    host: str,
    port: int,
    *,
    service: str,
    ready: Callable[[], Awaitable[bool]],
    stop: asyncio.Event,
    status: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Serve until ``stop`` is set. ``ready()`` answers /readyz (the worker's own checks), ``status()``
    /status (its tasks, consumer lag and last error, for ``membershipctl status``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, path, *_ = head[:MAX_REQUEST_BYTES].decode("latin-1").split(" ", 2)
            path = path.split("?", 1)[0]
            if method != "GET":
                out = _problem(405, "Only GET is served here.")
            elif path == "/metrics":
                out = _response(200, metrics.render().encode(), "text/plain; version=0.0.4")
            elif path == "/healthz":
                out = _response(
                    200, json.dumps({"status": "ok", "service": service, "role": "worker"}).encode(), "application/json"
                )
            elif path == "/status":
                doc = {"service": service, "role": "worker", **(status() if status else {})}
                out = _response(200, json.dumps(doc, default=str).encode(), "application/json")
            elif path == "/readyz":
                ok = await ready()
                out = _response(
                    200 if ok else 503,
                    json.dumps({"status": "ready" if ok else "not ready"}).encode(),
                    "application/json",
                )
            else:
                out = _problem(404, "Not found.")
            writer.write(out)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    bound = server.sockets[0].getsockname()[1]
    log.info("worker endpoint listening", extra={"host": host, "port": bound})
    async with server:
        await stop.wait()

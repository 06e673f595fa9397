"""Readiness that fits the outbox (SPEC §5, decision 0052).

An API writes its events to the outbox in its own database, never to the broker: it can take every
request while the broker is away, and the relay catches up later. So an API is **ready when its
database is**. The broker's state is still checked and reported: in /readyz's body (``checks.broker``)
and as ``membership_broker_up{service}`` (alert on it), but it never takes the API out of its Service.

The broker check never blocks the event loop: an asyncio connection with a timeout, reused for
``broker_check_seconds`` so a burst of probes makes one connection, and made by one probe at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from .observability import metrics

log = logging.getLogger(__name__)

#: how long one connection attempt to a bootstrap server may take
CONNECT_TIMEOUT_SECONDS = 1.0


async def broker_reachable(bootstrap: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> bool:
    """Whether any bootstrap server accepts a TCP connection (asyncio: the loop keeps serving)."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True
    return False


@dataclass
class BrokerCheck:
    """The last broker check of this process, reused for ``max_age`` seconds."""

    bootstrap: str
    service: str
    max_age: float
    checked_at: float | None = None
    up: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def state(self) -> bool:
        if self.checked_at is not None and time.monotonic() - self.checked_at < self.max_age:
            return self.up
        async with self._lock:  # concurrent probes wait for one check instead of each connecting
            if self.checked_at is None or time.monotonic() - self.checked_at >= self.max_age:
                self.up = await broker_reachable(self.bootstrap)
                self.checked_at = time.monotonic()
                metrics.set("broker_up", 1.0 if self.up else 0.0, service=self.service)
                if not self.up:
                    log.warning("readiness: broker unreachable (the API stays ready; the relay will catch up)")
        return self.up


async def database_reachable(engine: Any) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        log.warning("readiness: database unreachable", exc_info=True)
        return False


async def readiness(engine: Any, broker: BrokerCheck) -> tuple[bool, dict[str, Any]]:
    """(ready, the /readyz body): ready when the database answers; the broker is reported."""
    database, broker_up = await asyncio.gather(database_reachable(engine), broker.state())
    checks = {"database": database, "broker": broker_up}
    return database, {"status": "ready" if database else "not ready", "checks": checks}

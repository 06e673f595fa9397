"""The doorbell: how an idle consumer learns, without polling the broker, that its topic has news.

Tansu (the embedded broker) answers a fetch only when the fetch's wait runs out, even when data
arrives meanwhile: a consumer must either poll with short waits (low latency, but an idle platform
then spends a third of a core answering empty fetches) or wait long (cheap, but every hop costs up
to the wait). The doorbell removes the trade-off (docs/decisions/0045):

* the relay rings ``kafka_<topic>`` (``pg_notify``) in the transaction that marks the rows it has
  just published, so the notification is delivered when the broker already holds them;
* a consumer that has found nothing for ``consumer_idle_after_seconds`` (one empty fetch) pauses its partitions (no
  fetch reaches the broker) and waits for its topics' bell, or ``consumer_idle_poll_seconds`` at
  most (a message published by anything but a relay, a missed notification); then it resumes and
  fetches with the short wait while data flows.

Against Apache Kafka, which answers a long-poll as soon as data arrives, the same code is right
but unnecessary: set ``MEMBERSHIP_CONSUMER_IDLE_PAUSE=false`` and a long
``MEMBERSHIP_FETCH_MAX_WAIT_MS`` (500) there. Where the services' schemas live on different
PostgreSQL servers, a bell rung on one is not heard on another: the idle poll bounds the delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from .settings import Settings
from .transport import connect_asyncpg

log = logging.getLogger(__name__)


def bell_of(topic: str) -> str:
    """The notification channel rung when ``topic`` has new messages."""
    return f"kafka_{topic}"


def relay_channel(schema: str) -> str:
    """The notification channel that wakes a schema's outbox relay."""
    return f"outbox_{schema}"


class Notifier:
    """Sends ``pg_notify`` on a connection of its own, after (never inside) a writing transaction.

    A NOTIFY inside a transaction that writes holds PostgreSQL's cluster-wide notification lock
    through that transaction's commit and WAL flush: every writer that notified committed one at a
    time, which capped the whole platform at one commit per disk flush (docs/decisions/0049). Sent
    from here, the notifying transaction writes nothing, so its commit flushes nothing.

    :meth:`notify` returns at once; a notification asked for while one is being sent is sent after
    it, so every caller's notification leaves after its call (what a relay needs: rows committed
    before the call are seen by the round the notification starts). A lost notification costs
    latency, never events: the relay and idle consumers poll as well.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: Any = None
        self._pending: dict[str, None] = {}
        self._task: asyncio.Task[None] | None = None

    def notify(self, *channels: str) -> None:
        for channel in channels:
            self._pending[channel] = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._send(), name="notifier")

    async def _send(self) -> None:
        while self._pending:
            channels = list(self._pending)
            self._pending.clear()
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect_asyncpg(self.settings)
                await self._conn.execute("SELECT pg_notify(c, '') FROM unnest($1::text[]) AS c", channels)
            except Exception:
                log.warning("notification not sent; the pollers will catch up", exc_info=True)
                await self._drop()
                return

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                log.debug("notifier: closing the connection failed", exc_info=True)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self._task, timeout=2.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        await self._drop()


class Doorbell:
    """Listens on the bells of some topics; :meth:`wait` returns when one rang (or after a timeout)."""

    def __init__(self, settings: Settings, topics: Iterable[str]) -> None:
        self.settings = settings
        self.channels = sorted({bell_of(t) for t in topics})
        self.rung = asyncio.Event()
        self._conn: Any = None

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Listen on every channel; on failure the consumer falls back to its idle poll."""
        try:
            conn = await connect_asyncpg(self.settings)
            for channel in self.channels:
                await conn.add_listener(channel, self._ring)
            self._conn = conn
        except Exception:
            log.warning("doorbell: LISTEN failed; idle consumers fall back to polling", exc_info=True)

    def _ring(self, *_: object) -> None:
        self.rung.set()

    def arm(self) -> None:
        """Forget earlier rings: call before the fetch whose emptiness decides to wait."""
        self.rung.clear()

    async def wait(self, timeout: float, stop: asyncio.Event) -> bool:
        """Until the bell rings, ``stop`` is set, or ``timeout`` passes; True when it rang."""
        if not self.listening and self._conn is not None:
            await self.close()
            await self.start()  # the connection was lost: listen again (rings meanwhile are covered by the poll)
        rung = asyncio.ensure_future(self.rung.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({rung, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            rung.cancel()
            stopping.cancel()
        return self.rung.is_set()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await conn.close()
            except Exception:
                log.debug("doorbell: closing the connection failed", exc_info=True)

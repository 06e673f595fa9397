"""The outbox relay: publishes committed outbox rows to Kafka, in order per member.

Ordering and replicas: every row carries ``shard = crc32(member_id) % shards``.
A relay publishes a shard only while holding a transaction-scoped advisory lock
on (schema, shard), in ``id`` order, and marks the rows published in the same
transaction (one transaction per round for all the shards it could lock).
Several relay replicas therefore split the shards between them, never publish
one member's events concurrently, and a relay that dies before its commit
leaves the rows unpublished for the next one (at-least-once; the consumers'
inbox makes the duplicates harmless).

Wake-up: a unit of work that wrote outbox rows wakes the relay after its commit
(``Database.outbox_written``): directly when the relay runs in the same process,
else with ``pg_notify('outbox_<schema>')``, which the relay LISTENs on; it also
polls every ``outbox_poll_seconds`` in case a notification is missed.
After publishing, it rings the topics' doorbells (shared.doorbell) for idle consumers.
"""

from __future__ import annotations

import asyncio
import logging
import zlib

import asyncpg
from aiokafka import AIOKafkaProducer
from sqlalchemy import text, update

from . import tracing
from .db import Database
from .doorbell import bell_of, relay_channel
from .events import CONTENT_TYPE
from .observability import metrics
from .transport import connect_asyncpg

log = logging.getLogger(__name__)


def lock_namespace(schema: str) -> int:
    # advisory locks take two int4 keys: (namespace of this schema's outbox, shard)
    return zlib.crc32(f"outbox:{schema}".encode()) & 0x7FFFFFFF


class OutboxRelay:
    def __init__(self, db: Database, producer: AIOKafkaProducer, schema: str) -> None:
        self.db = db
        self.producer = producer
        self.schema = schema
        self.table = db.tables.outbox
        self.wake = asyncio.Event()
        self.namespace = lock_namespace(schema)

    async def run(self, stop: asyncio.Event) -> None:
        self.db.relays.append(self.wake.set)  # units of work of this process wake it directly
        listener = await self._listen()
        try:
            while not stop.is_set():
                # forget earlier wake-ups BEFORE looking: a notification arriving while this round runs
                # (its rows committed after the round's read) then calls for another round at once
                self.wake.clear()
                try:
                    published = await self.publish_pending()
                except Exception:
                    log.exception("outbox relay failed; retrying")
                    published = 0
                    await asyncio.sleep(1)
                if published:
                    continue
                waiter = asyncio.ensure_future(self.wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait(
                    {waiter, stopper}, timeout=self.db.settings.outbox_poll_seconds, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                stopper.cancel()
        finally:
            if listener is not None:
                await listener.close()

    async def _listen(self) -> asyncpg.Connection | None:
        try:
            conn = await connect_asyncpg(self.db.settings)
            await conn.add_listener(relay_channel(self.schema), lambda *_: self.wake.set())
            return conn
        except Exception:
            log.warning("LISTEN failed; the relay falls back to polling", exc_info=True)
            return None

    async def publish_pending(self) -> int:
        """Publish every committed, unpublished row of every shard this relay can lock."""
        total = 0
        while True:
            published = await self._publish_round()
            total += published
            if published < self.db.settings.outbox_batch:
                return total

    async def _publish_round(self) -> int:
        """One transaction: lock every shard with unpublished rows that no other replica holds, send up
        to a batch of their rows in ``id`` order, wait for the broker's acknowledgements, mark them
        published, and ring the topics' doorbells. Per shard the order is the rows' order; the
        producer keeps it per partition (one member's events share a key, hence a partition)."""
        t = self.table
        async with self.db.engine.begin() as conn:
            rows = (
                await conn.execute(
                    text(
                        f"""
                        WITH waiting AS MATERIALIZED (
                            SELECT DISTINCT shard FROM {t.schema}.{t.name} WHERE published_at IS NULL),
                        locked AS MATERIALIZED (
                            SELECT shard FROM waiting WHERE pg_try_advisory_xact_lock(:ns, shard))
                        SELECT id, topic, key, payload FROM {t.schema}.{t.name}
                        WHERE published_at IS NULL AND shard IN (SELECT shard FROM locked)
                        ORDER BY id LIMIT :limit
                        """
                    ),
                    {"ns": self.namespace, "limit": self.db.settings.outbox_batch},
                )
            ).all()
            if not rows:
                return 0
            futures = [await self._send(r.topic, r.key, r.payload) for r in rows]
            await asyncio.gather(*futures)
            await conn.execute(update(t).where(t.c.id.in_([r.id for r in rows])).values(published_at=text("now()")))
        # ring the topics' doorbells, now that the broker holds the rows (after the commit: a NOTIFY inside
        # this writing transaction would serialise every commit of the cluster, docs/decisions/0049)
        self.db.notifier.notify(*sorted({bell_of(r.topic) for r in rows}))
        metrics.inc("outbox_published_total", len(rows), service=self.schema)
        return len(rows)

    async def _send(self, topic: str, key: str, payload: str) -> asyncio.Future[object]:
        """Send a row's message with its event's trace context (the W3C headers; with tracing on, inside
        that context, so the producer's span continues the trace of the request that made the event)."""
        headers = [("content-type", _CONTENT_TYPE), *tracing.relay_headers(payload)]
        with tracing.sending(payload):
            sent: asyncio.Future[object] = await self.producer.send(
                topic, value=payload.encode(), key=key.encode(), headers=headers
            )
        return sent


_CONTENT_TYPE = CONTENT_TYPE.encode()


def outbox_notify_ddl(schema: str) -> list[str]:
    """DDL for the statement trigger that wakes the relay; used by each service's first migration."""
    channel = relay_channel(schema)
    return [
        f"""CREATE OR REPLACE FUNCTION {schema}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $$""",
        f"""CREATE TRIGGER outbox_notify AFTER INSERT ON {schema}.outbox
            FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify()""",
    ]

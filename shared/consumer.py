"""The idempotent consumer runner, written once for every service.

A service gives it ``handlers``, built by :func:`handlers` from functions whose signature
says which event they take: ``async def on_x(event: CloudEvent[X], uow: Unit) -> None``.
The runner:

* reads batches with ``getmany``; all of a batch's events are applied in ONE
  database transaction, whose first statement records their ids in the schema's
  ``inbox`` (``ON CONFLICT DO NOTHING``): an id already there was applied
  before, so a redelivered event changes nothing;
* commits Kafka offsets only after that transaction commits (at-least-once
  delivery, exactly-once effects);
* decodes only the types it has a handler for; another type is skipped and counted
  (``events_skipped_total``: a newer producer may add types), never dead-lettered;
* sends undecodable or invalid messages of a type it handles, and events whose handler keeps failing
  (``consumer_max_attempts``), to ``<topic>.dlq`` with the error and the original
  topic/partition/offset, then moves on;
* on a handler failure, retries the batch one event per transaction so a poison
  event cannot hold back the events behind it; database/broker outages are not
  the event's fault and are retried without dead-lettering;
* finishes the batch in hand before giving partitions away in a rebalance, and
  on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from . import tracing
from .db import Database, Unit, UnitOfWork
from .doorbell import Doorbell
from .events import (
    EVENT_TYPES,
    CloudEvent,
    EventData,
    UndecodableEvent,
    decode,
    dlq_of,
    parse,
    peek_type,
    topic_of,
)
from .observability import correlation_scope, metrics, observe_batch
from .transport import kafka_options

log = logging.getLogger(__name__)

#: ``async def on_x(event: CloudEvent[X], uow: Unit) -> None`` (the uow is Any here so that a handler
#: needing the SQL unit of work, like PolicyStore.on_policy_changed, may say so)
Handler = Callable[[CloudEvent[Any], Any], Awaitable[None]]
Handlers = dict[type[EventData], Handler]
#: called once per batch, in its transaction, with the events about to be handled: a service
#: loads (and locks) in a few set-based queries what its handlers would otherwise read one
#: event at a time, and leaves it in its typed batch context (``uow.state(Batch)``) for them
Prepare = Callable[[list[CloudEvent[Any]], UnitOfWork], Awaitable[None]]


def event_type_of(handler: Handler) -> type[EventData]:
    """The event type a handler takes, read from its first parameter's annotation ``CloudEvent[X]``."""
    params = list(inspect.signature(handler, eval_str=True).parameters.values())
    annotation = params[0].annotation if params else None
    args = getattr(annotation, "__pydantic_generic_metadata__", {}).get("args", ())
    if len(args) != 1 or not (isinstance(args[0], type) and issubclass(args[0], EventData)):
        raise TypeError(f"{handler.__qualname__}: annotate its event parameter as CloudEvent[<event type>]")
    return args[0]


def handlers(*functions: Handler) -> Handlers:
    """The consumer's handler table, keyed by the event type each function's signature names;
    two handlers of one type are a mistake, not an override."""
    table: Handlers = {}
    for fn in functions:
        event_type = event_type_of(fn)
        if event_type in table:
            raise TypeError(f"two handlers take {event_type.__name__}")
        table[event_type] = fn
    return table


class MemberOfAnotherChain(ValueError):
    """An event naming a member this service knows in another chain than the event's: forged or
    misrouted, never applied (the consumer dead-letters it; decision 0031). The message names the
    event's chain only, never the member's: the dead letter is listed to the event's chain."""


def check_member_chain(event: CloudEvent[Any], member_id: str, known_chain_id: str | None) -> None:
    """Refuse ``event`` when its member is known (``known_chain_id``) in another chain than the event
    names. An unknown member (None) passes: events may overtake the member's enrolment."""
    if known_chain_id is not None and known_chain_id != event.chainid:
        raise foreign_member(event, member_id)


def foreign_member(event: CloudEvent[Any], member_id: str) -> MemberOfAnotherChain:
    """The error for an event whose member is known in another chain than the event names."""
    return MemberOfAnotherChain(
        f"{event.type} {event.id} names member {member_id}, who is not a member of chain {event.chainid}"
    )


#: serialization failure, deadlock, shutdown, connection lost; and a schema behind the code (undefined
#: table/column: a rolling upgrade whose migration has not run yet) is waited out, not dead-lettered
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006", "42P01", "42703"}


def is_transient(exc: BaseException) -> bool:
    """An outage or a concurrency conflict: retry, it is not the event's fault."""
    if isinstance(exc, (OperationalError, InterfaceError, ConnectionError, TimeoutError, OSError, KafkaError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlstate", None) or getattr(getattr(exc.orig, "__cause__", None), "sqlstate", None)
        return code in TRANSIENT_SQLSTATES
    return False


async def apply_events(
    uow: UnitOfWork, events: list[CloudEvent[Any]], handlers: Handlers, prepare: Prepare | None = None
) -> list[CloudEvent[Any]]:
    """Apply events exactly once in the caller's transaction: their ids go into the inbox first (one
    statement); the ones already there were applied before and change nothing. Returns those applied.
    The consumer runs every batch through here, and so does a dead letter's re-drive."""
    fresh = await _record_in_inbox(uow, [e.id for e in events])
    todo = []
    for event in events:
        if event.id not in fresh:
            continue  # applied before: redelivery changes nothing
        fresh.discard(event.id)  # the same event twice in one batch is applied once
        todo.append(event)
    if prepare is not None and todo:
        await prepare(todo, uow)
    for event in todo:
        enter_event(uow, event)
        with correlation_scope(uow.correlation_id), tracing.event_span(event, uow):
            await handlers[type(event.data)](event, uow)
    return todo


def enter_event(uow: Unit, event: CloudEvent[Any]) -> None:
    """What the events ``event``'s handler publishes continue: its correlation, it as their cause, its
    being imported; remembered per member for the work deferred to the end of the batch."""
    uow.correlation_id = event.correlationid or event.id
    uow.causation_id = event.id
    uow.imported = event.imported  # what an imported event causes is imported too
    uow.causes[event.subject] = (uow.correlation_id, uow.causation_id)


async def _record_in_inbox(uow: UnitOfWork, ids: list[str]) -> set[str]:
    """Insert the batch's ids in one statement; return those not seen before."""
    inbox = uow.tables.inbox
    stmt = text(
        f"INSERT INTO {inbox.schema}.{inbox.name} (event_id) SELECT unnest(CAST(:ids AS text[])) "
        "ON CONFLICT DO NOTHING RETURNING event_id"
    )
    return set((await uow.session.execute(stmt, {"ids": ids})).scalars().all())


@dataclass
class Delivery:
    record: ConsumerRecord
    event: CloudEvent[Any] | None = None
    error: str | None = None
    attempts: int = 1


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # wait for the batch in hand to commit before the partitions move on
        async with self.lock:
            pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": len(assigned)})


class ConsumerRunner:
    def __init__(
        self,
        *,
        service: str,
        db: Database,
        handlers: Handlers,
        producer: AIOKafkaProducer,
        prepare: Prepare | None = None,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self.on_applied = on_applied  # told after each batch is committed (shared.service nudges schedules)
        self.db = db
        self.handlers = handlers
        self.types = {cls.__name__: cls for cls in handlers}
        self.prepare = prepare
        self.lag: dict[TopicPartition, int] = {}
        #: the next offset to read per partition, as last committed by this runner (consumer_lag's base)
        self.committed: dict[TopicPartition, int] = {}
        self.producer = producer
        self.settings = db.settings
        self.topics = sorted({topic_of(cls.publisher) for cls in handlers})
        self.group_id = f"membership-{service}"
        self.lock = asyncio.Lock()
        self.failures: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None

    def make_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **kafka_options(self.settings),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            max_poll_records=self.settings.consumer_batch,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.consumer = self.make_consumer()
        consumer.subscribe(self.topics, listener=_Rebalance(self.lock))
        doorbell = Doorbell(self.settings, self.topics) if self.settings.consumer_idle_pause else None
        if doorbell is not None:
            await doorbell.start()
        await consumer.start()
        log.info("consumer started", extra={"topics": self.topics, "group": self.group_id})
        idle_ms = round(self.settings.consumer_idle_after_seconds * 1000)
        # after an idle poll that no bell called for, one fetch (not a whole idle period of them) tells
        # whether anything arrived unannounced
        glance_ms = min(idle_ms, 2 * self.settings.fetch_max_wait_ms + 10)
        timeout_ms = idle_ms
        watcher = asyncio.create_task(self.watch_lag(consumer, stop), name="consumer-lag")
        try:
            while not stop.is_set():
                if doorbell is not None:
                    doorbell.arm()  # a ring from now on means: fetch again, even if this fetch finds nothing
                batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=self.settings.consumer_batch)
                timeout_ms = idle_ms
                if not batch:
                    if doorbell is not None and not await self._doze(consumer, doorbell, stop):
                        timeout_ms = glance_ms
                    continue
                async with self.lock:
                    records = [r for tp_records in batch.values() for r in tp_records]
                    if not await self.process(records, stop):
                        break  # leave offsets uncommitted; the batch is redelivered
                    offsets = {tp: rs[-1].offset + 1 for tp, rs in batch.items()}
                    try:
                        await consumer.commit(offsets)
                        self.committed.update(offsets)
                    except (CommitFailedError, IllegalStateError):  # the group moved on (or took partitions)
                        log.warning("offset commit failed after a rebalance; the batch will be redelivered")
                    self._report_lag(consumer, offsets)
                    if self.on_applied is not None:
                        self.on_applied()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await consumer.stop()
            if doorbell is not None:
                await doorbell.close()

    async def _doze(self, consumer: AIOKafkaConsumer, doorbell: Doorbell, stop: asyncio.Event) -> bool:
        """Nothing came for a while: stop fetching (paused partitions cost the broker nothing) until a
        relay rings one of this consumer's topics, or the idle poll comes round (shared.doorbell).
        True when the bell rang."""
        consumer.pause(*consumer.assignment())
        try:
            return await doorbell.wait(self.settings.consumer_idle_poll_seconds, stop)
        finally:
            # a rebalance meanwhile may have replaced the assignment: resume what is assigned now
            consumer.resume(*consumer.assignment())

    async def watch_lag(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Measure ``consumer_lag`` against the broker every ``consumer_lag_interval_seconds``, apart from
        the batches: a consumer stuck on a batch (or an outage) still shows its lag growing."""
        interval = self.settings.consumer_lag_interval_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                return
            try:
                await self.refresh_lag(consumer)
            except Exception as exc:  # a rebalance or an outage: measured again on the next tick
                log.debug("consumer lag not measured", extra={"error": repr(exc)})

    async def refresh_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Lag per assigned partition: the broker's end offset (asked now) minus the offset this runner
        last committed (or the group's committed offset, before its first commit here)."""
        assigned = sorted(consumer.assignment())
        for tp in list(self.lag):
            if tp not in assigned:
                del self.lag[tp]
        if assigned:
            ends = await consumer.end_offsets(assigned)
            for tp in assigned:
                done = self.committed.get(tp)
                if done is None:
                    done = await consumer.committed(tp)
                    if done is not None:
                        self.committed[tp] = done
                self.lag[tp] = max(0, ends[tp] - (done or 0))
        self._set_lag_gauges()
        metrics.set("consumer_lag_refreshed_timestamp_seconds", time.time(), service=self.service)

    def _report_lag(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """``consumer_lag{topic}``: messages behind the partitions' high-water marks, as of each
        partition's latest batch (the gauge a scaler or an alert watches). A metric never stops the
        consumer: partitions revoked by a rebalance meanwhile are skipped (aiokafka asserts on them)."""
        assigned = consumer.assignment()
        for tp in list(self.lag):
            if tp not in assigned:
                del self.lag[tp]
        for tp, offset in offsets.items():
            if tp not in assigned:
                continue
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self.lag[tp] = max(0, highwater - offset)
        self._set_lag_gauges()

    def _set_lag_gauges(self) -> None:
        for topic in self.topics:
            metrics.set(
                "consumer_lag",
                sum(n for tp, n in self.lag.items() if tp.topic == topic),
                service=self.service,
                topic=topic,
            )

    async def process(self, records: list[ConsumerRecord], stop: asyncio.Event) -> bool:
        """Apply a batch exactly once. True when every record is applied, skipped or dead-lettered;
        False when asked to stop first (then nothing of the batch is committed)."""
        started = time.perf_counter()
        deliveries = [self._decode(r) for r in records]
        dead = [d for d in deliveries if d.error is not None]
        todo = [d for d in deliveries if d.event is not None]
        backoff = self.settings.consumer_retry_backoff_seconds
        while todo and not stop.is_set():
            try:
                await self._apply(todo)
                break
            except Exception as exc:
                if is_transient(exc):
                    log.warning("transient failure applying a batch; retrying", extra={"error": repr(exc)})
                    await asyncio.sleep(min(backoff, 5.0))
                    backoff = max(backoff * 2, 0.1)
                    continue
                log.warning("a handler failed; applying the batch one event at a time", extra={"error": repr(exc)})
                failed = await self._apply_one_by_one(todo, stop)
                if failed is None:
                    return False
                dead += failed
                break
        else:
            if todo:
                return False  # stopping: nothing committed, everything will be redelivered
        for d in dead:
            await self._dead_letter(d)
        self._observe(records, todo, time.perf_counter() - started)
        return True

    def _observe(self, records: list[ConsumerRecord], applied: list[Delivery], seconds: float) -> None:
        """The batch's metrics: size, duration, and each event's age (now - its time; imported history
        is old on purpose and left out)."""
        now = self.db.clock.now()
        ages = [
            (d.record.topic, (now - d.event.time).total_seconds())
            for d in applied
            if d.event is not None and not d.event.imported
        ]
        observe_batch(self.service, size=len(records), seconds=seconds, ages=ages)

    def _decode(self, record: ConsumerRecord) -> Delivery:
        """A record of a type this consumer handles is decoded strictly (invalid: dead-lettered); one of
        another type, known or not, is skipped and counted (neither applied nor dead-lettered)."""
        try:
            if record.value is None:
                raise UndecodableEvent("empty message")
            doc = parse(record.value)
            event_type = peek_type(doc)
            if event_type is None:
                raise UndecodableEvent("no event type")
            if event_type not in self.types:
                # another service's concern, or a newer producer's type: not this consumer's to judge
                reason = "not handled" if event_type in EVENT_TYPES else "unknown type"
                metrics.inc("events_skipped_total", 1, service=self.service, reason=reason)
                return Delivery(record)
            return Delivery(record, event=decode(doc, self.types))
        except UndecodableEvent as exc:
            return Delivery(record, error=str(exc))

    async def _apply(self, deliveries: list[Delivery]) -> None:
        async with self.db.unit_of_work() as uow:
            await apply_events(uow, [d.event for d in deliveries if d.event is not None], self.handlers, self.prepare)

    async def _apply_one_by_one(self, deliveries: list[Delivery], stop: asyncio.Event) -> list[Delivery] | None:
        """Each event in its own transaction; returns the ones that kept failing (None if stopped)."""
        dead: list[Delivery] = []
        for d in deliveries:
            event = d.event
            assert event is not None
            attempt = 0
            while not stop.is_set():
                attempt += 1
                try:
                    await self._apply([d])
                    break
                except Exception as exc:
                    if is_transient(exc):
                        await asyncio.sleep(1.0)
                        attempt -= 1
                        continue
                    if attempt >= self.settings.consumer_max_attempts:
                        log.error(
                            "event failed %d times; dead-lettering it",
                            attempt,
                            extra={"event_id": event.id, "event_type": event.type, "error": repr(exc)},
                        )
                        d.error = f"handler failed {attempt} times: {exc!r}"
                        d.attempts = attempt
                        dead.append(d)
                        break
                    await asyncio.sleep(self.settings.consumer_retry_backoff_seconds * attempt)
            else:
                return None
        return dead

    async def _dead_letter(self, d: Delivery) -> None:
        r = d.record
        headers = [
            *(r.headers or []),
            ("dlq.error", (d.error or "")[:4000].encode()),
            ("dlq.topic", r.topic.encode()),
            ("dlq.partition", str(r.partition).encode()),
            ("dlq.offset", str(r.offset).encode()),
            ("dlq.consumer", self.group_id.encode()),
        ]
        from .dead_letters import record_dead_letter

        # the table first: it is what operators list and re-drive; the topic is the broker-side copy
        await record_dead_letter(
            self.db,
            topic=r.topic,
            partition=r.partition,
            offset=r.offset,
            key=r.key,
            value=r.value,
            error=d.error or "",
            attempts=d.attempts,
        )
        await (await self.producer.send(dlq_of(r.topic), value=r.value, key=r.key, headers=headers))
        metrics.inc("events_dead_lettered_total", 1, service=self.service)
        log.warning(
            "message dead-lettered",
            extra={"topic": r.topic, "partition": r.partition, "offset": r.offset, "error": d.error},
        )

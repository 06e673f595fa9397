"""Database engine, the unit of work, and the tables every service schema has.

Each service owns one PostgreSQL schema, created by its own Alembic history.
A unit of work is one transaction: the state change and the events it causes
(rows in the schema's outbox) commit together or not at all.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    and_,
    bindparam,
    func,
    insert,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.util import find_tables

from . import tracing
from .clock import Clock, SystemClock
from .crypto import Keyring
from .doorbell import Notifier, relay_channel
from .events import CloudEvent, D, new_event
from .observability import count_committed
from .settings import Settings
from .transport import postgres_target


def make_engine(settings: Settings, pool_size: int | None = None, *, pooled: bool = True) -> AsyncEngine:
    """Every engine of the platform: TLS from :func:`shared.transport.postgres_target` (the same as the
    relay's LISTEN connection) and ``hide_parameters``, so no SQL error or log line carries a value
    (a phone, a name) a statement was given. ``pooled=False``: one connection per use (tools, migrations)."""
    target = postgres_target(settings)
    if not pooled:
        return create_async_engine(
            target.url, poolclass=NullPool, connect_args=target.connect_args(), hide_parameters=True
        )
    size = pool_size or settings.db_pool_size
    return create_async_engine(
        target.url,
        # a fixed pool: connections that open and close under load (overflow) cost a PostgreSQL backend
        # each, and the API more than the queries; a request waits for a free one instead
        pool_size=size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        # no round trip before every checkout: a connection found broken is invalidated when used
        # (the caller sees a 503 and retries; the pool replaces it), docs/decisions/0046
        pool_pre_ping=settings.db_pool_pre_ping,
        pool_recycle=1800,
        connect_args=target.connect_args(),
        hide_parameters=True,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@dataclass(frozen=True)
class ServiceTables:
    """The tables the shared mechanisms keep in every service's schema."""

    outbox: Table
    inbox: Table
    idempotency: Table
    dead_letters: Table
    audit: Table


def shared_tables(metadata: MetaData) -> ServiceTables:
    outbox = Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("event_id", Text, nullable=False, unique=True),
        Column("event_type", Text, nullable=False),
        Column("topic", Text, nullable=False),
        Column("key", Text, nullable=False),
        Column("shard", SmallInteger, nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True)),
        Index("outbox_unpublished", "shard", "id", postgresql_where=text("published_at IS NULL")),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("event_id", Text, primary_key=True),
        Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    idempotency = Table(
        "idempotency_keys",
        metadata,
        Column("chain_id", Text, primary_key=True),
        # the API key that sent it: two keys of one chain never share an Idempotency-Key (decision 0033);
        # '' on the rows written before migration "idempotency keys per API key"
        Column("key_id", Text, primary_key=True, server_default=""),
        Column("scope", Text, primary_key=True),
        Column("key", Text, primary_key=True),
        Column("request_hash", Text, nullable=False),
        Column("status_code", Integer),
        Column("response", JSONB),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )
    from .audit import audit_table
    from .dead_letters import dead_letters_table

    return ServiceTables(outbox, inbox, idempotency, dead_letters_table(metadata), audit_table(metadata))


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % shards


T = TypeVar("T")


@dataclass
class Unit:
    """What handlers see of a unit of work: the clock, the events they publish, per-transaction
    state, and work deferred to the end. :class:`UnitOfWork` is the real one (one PostgreSQL
    transaction); ``shared.testing.FakeUnitOfWork`` is the in-memory one of fast handler tests.

    ``publish`` only records the event; the real unit of work writes the rows to the outbox in
    one insert when it ends, inside the same transaction as everything else.

    ``state(kind)`` is the transaction's one instance of ``kind``: a service's typed batch
    context (what its ``prepare`` loaded for a consumer batch) or its store (the table access
    its handlers use, which a test replaces with :meth:`provide`). It dies with the transaction.

    ``at_commit`` defers work to the end of the unit of work, once per key however many
    events asked for it: tiering re-evaluates each member once per batch, not once per fact.
    """

    clock: Clock
    correlation_id: str | None = None
    causation_id: str | None = None
    #: the events published are part of an imported history (see CloudEvent.imported)
    imported: bool = False
    pending: list[CloudEvent[Any] | None] = field(default_factory=list)
    _replaceable: dict[Hashable, int] = field(default_factory=dict)
    _state: dict[type, object] = field(default_factory=dict)
    _at_commit: dict[Hashable, Callable[[Any], Awaitable[None]]] = field(default_factory=dict)
    #: the trace context of the last event handled per member (tracing on only; shared.tracing.event_span):
    #: an event published about that member outside any span (deferred work) continues that trace
    traces: dict[str, Any] = field(default_factory=dict)
    #: the correlation and causation of the last event handled per member (shared.consumer.apply_events):
    #: an event published about that member by deferred work (``at_commit``, after the batch's handlers)
    #: continues that member's story, not the correlation of whichever event the batch ended with
    causes: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    _deferred: bool = False

    def now(self) -> datetime:
        return self.clock.now()

    def publish(
        self,
        data: D,
        *,
        member_id: str,
        chain_id: str,
        time: datetime | None = None,
        replaces: Hashable = None,
    ) -> CloudEvent[D]:
        """Record an event for the outbox. ``replaces``: a key for snapshot events (the latest state
        of something, like a member's progress); a later event with the same key in the same
        transaction takes the earlier one's place, so a batch publishes one snapshot per key."""
        event = self.event(data, member_id=member_id, chain_id=chain_id, time=time)
        if replaces is not None and replaces in self._replaceable:
            self.pending[self._replaceable.pop(replaces)] = None  # dropped at flush, order kept
        if replaces is not None:
            self._replaceable[replaces] = len(self.pending)
        self.pending.append(event)
        return event

    def event(self, data: D, *, member_id: str, chain_id: str, time: datetime | None = None) -> CloudEvent[D]:
        """An event of this unit of work (its correlation, causation, clock and trace), not yet published:
        :meth:`publish` queues it for the outbox; a command that writes its outbox row in its own
        statement (:meth:`UnitOfWork.outbox_row`) makes it here."""
        correlation_id, causation_id = self.correlation_id, self.causation_id
        if self._deferred and member_id in self.causes:
            correlation_id, causation_id = self.causes[member_id]
        with tracing.resumed(self.traces.get(member_id) if self.traces else None):
            return new_event(
                data,
                member_id=member_id,
                chain_id=chain_id,
                correlation_id=correlation_id,
                causation_id=causation_id,
                time=time or self.now(),
                imported=self.imported,
            )

    @property
    def events(self) -> list[CloudEvent[Any]]:
        """The events published so far (snapshots replaced by a later one left out)."""
        return [e for e in self.pending if e is not None]

    def state(self, kind: type[T], make: Callable[[UnitOfWork], T] | None = None) -> T:
        """The transaction's instance of ``kind``: made on first use by ``make(uow)`` (a store over
        the real tables), or by ``kind()`` (a batch context's empty dataclass)."""
        held = self._state.get(kind)
        if held is None:
            held = self._state[kind] = self._make(kind, make)
        return cast(T, held)

    def _make(self, kind: type[T], make: Callable[[UnitOfWork], T] | None) -> T:
        if make is None:
            return kind()
        if not isinstance(self, UnitOfWork):
            raise TypeError(f"{kind.__name__} was not provided to this unit of work")
        return make(self)

    def provide(self, kind: type[T], value: T) -> None:
        """Use ``value`` as the transaction's ``kind`` (a test's in-memory store)."""
        self._state[kind] = value

    def at_commit(self, key: Hashable, work: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``work(uow)`` when the unit of work ends, before its writes and events are flushed;
        asked again with the same key before then, it still runs once."""
        self._at_commit.setdefault(key, work)

    async def run_at_commit(self) -> None:
        self._deferred = True
        try:
            while self._at_commit:  # deferred work may defer more
                key = next(iter(self._at_commit))
                await self._at_commit.pop(key)(self)
        finally:
            self._deferred = False


@dataclass(kw_only=True)
class UnitOfWork(Unit):
    """One transaction of one service: its session, its tables, the events it will publish.

    ``insert_later`` and ``update_later`` queue row writes: a consumer batch of a thousand
    events then writes each table in one multi-row statement instead of a thousand round
    trips. Queued rows are written before any statement run through :meth:`execute` that
    touches their table, so reads inside the transaction see them; read a table you queue
    writes for through ``uow.execute``, not ``uow.session``.
    """

    session: AsyncSession
    tables: ServiceTables
    shards: int
    #: the chains' key-encryption keys (members' data keys are wrapped under them; shared.personal_data)
    keyring: Keyring | None = None
    #: queued writes: rows to insert per table, and the latest values to set per (table, row key)
    _inserts: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    _updates: dict[tuple[Table, tuple[tuple[str, Any], ...]], dict[str, Any]] = field(default_factory=dict)
    _written: list[CloudEvent[Any]] = field(default_factory=list)

    @property
    def queued_tables(self) -> set[Table]:
        """The tables with queued writes not yet sent to the database."""
        return set(self._inserts) | {table for table, _ in self._updates}

    def insert_later(self, table: Table, row: dict[str, Any]) -> None:
        """Queue a row for the table's multi-row insert at the end of the unit of work."""
        self._inserts.setdefault(table, []).append(row)

    def update_later(self, table: Table, key: dict[str, Any], values: dict[str, Any]) -> None:
        """Queue ``UPDATE table SET values WHERE key``; later values for the same row replace
        earlier ones (plain values only: an expression like ``balance + 1`` would not add up)."""
        self._updates.setdefault((table, tuple(sorted(key.items()))), {}).update(values)

    async def execute(self, statement: Any, params: Any = None) -> Any:
        if self._inserts or self._updates:
            await self.flush_writes(self._tables_of(statement))
        return await self.session.execute(statement, params)

    @staticmethod
    def _tables_of(statement: Any) -> set[Table] | None:
        """The tables a statement reads or writes; None when it can't be told (text), meaning all."""
        if not isinstance(statement, ClauseElement) or isinstance(statement, TextClause):
            return None
        return {t for t in find_tables(statement, include_crud=True, include_joins=True) if isinstance(t, Table)}

    async def flush_writes(self, tables: set[Table] | None = None) -> None:
        """Write the queued rows (of ``tables`` only, when given): one insert per table, then one
        executemany update per table and set of columns."""
        for table in [t for t in self._inserts if tables is None or t in tables]:
            rows = self._inserts.pop(table)
            by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in rows:
                by_columns.setdefault(tuple(row), []).append(row)
            for same in by_columns.values():
                await self.session.execute(insert(table), same)
        groups: dict[tuple[Table, tuple[str, ...], tuple[str, ...]], list[dict[str, Any]]] = {}
        for (table, key), values in list(self._updates.items()):
            if tables is not None and table not in tables:
                continue
            del self._updates[(table, key)]
            params = {**{f"k_{k}": v for k, v in key}, **{f"v_{c}": v for c, v in values.items()}}
            groups.setdefault((table, tuple(k for k, _ in key), tuple(values)), []).append(params)
        for (table, key_columns, value_columns), rows_params in groups.items():
            stmt = (
                update(table)
                .where(and_(*[table.c[k] == bindparam(f"k_{k}") for k in key_columns]))
                .values({c: bindparam(f"v_{c}") for c in value_columns})
            )
            await self.session.execute(stmt, rows_params)

    def outbox_row(self, event: CloudEvent[Any]) -> dict[str, Any]:
        """The outbox row of an event (what :meth:`flush_outbox` inserts)."""
        return {
            "event_id": event.id,
            "event_type": event.type,
            "topic": event.topic,
            "key": event.subject,
            "shard": shard_of(event.subject, self.shards),
            "payload": event.to_json().decode(),
        }

    def written(self, event: CloudEvent[Any]) -> None:
        """An event whose outbox row a statement of this unit wrote itself (counted at commit)."""
        self._written.append(event)

    async def flush_outbox(self) -> list[CloudEvent[Any]]:
        """Write the events published to the outbox (one insert); returns them, and those written."""
        events = self.events
        self.pending.clear()
        self._replaceable.clear()
        if events:
            await self.session.execute(insert(self.tables.outbox), [self.outbox_row(e) for e in events])
        return [*self._written, *events]


@dataclass
class Database:
    """What a service process holds on to: engine, sessions, its tables, its clock."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tables: ServiceTables
    clock: Clock
    keyring: Keyring | None = None
    #: wake-ups of the outbox relays running in this process (an OutboxRelay registers its own)
    relays: list[Callable[[], None]] = field(default_factory=list)
    notifier: Notifier = field(init=False)

    def __post_init__(self) -> None:
        self.notifier = Notifier(self.settings)

    def outbox_written(self) -> None:
        """Outbox rows were committed: wake the relay (in this process directly, else by notification)."""
        if self.relays:
            for wake in self.relays:
                wake()
        else:
            self.notifier.notify(relay_channel(str(self.tables.outbox.schema)))

    @classmethod
    def connect(
        cls, settings: Settings, tables: ServiceTables, clock: Clock | None = None, pool_size: int | None = None
    ) -> Database:
        engine = make_engine(settings, pool_size)
        keyring = Keyring.from_base64(settings.pii_master_key.get_secret_value())
        return cls(settings, engine, make_sessionmaker(engine), tables, clock or SystemClock(), keyring)

    @asynccontextmanager
    async def unit_of_work(
        self, *, correlation_id: str | None = None, causation_id: str | None = None
    ) -> AsyncIterator[UnitOfWork]:
        async with self.sessions() as session, session.begin():
            uow = UnitOfWork(
                self.clock,
                correlation_id,
                causation_id,
                session=session,
                tables=self.tables,
                shards=self.settings.outbox_shards,
                keyring=self.keyring,
            )
            yield uow
            await uow.run_at_commit()
            await uow.flush_writes()
            events = await uow.flush_outbox()
        if events:  # committed: count them (events_published_total, tier_changes_total), wake the relay
            count_committed(str(self.tables.outbox.schema), events)
            self.outbox_written()

    @asynccontextmanager
    async def reading(self, *, correlation_id: str | None = None) -> AsyncIterator[UnitOfWork]:
        """A unit of work for a read: no transaction (autocommit), so a one-query read is one round trip,
        not BEGIN, query, COMMIT. Nothing it writes or publishes is kept: use :meth:`unit_of_work`."""
        async with self.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with AsyncSession(bind=autocommit) as session:
                uow = UnitOfWork(
                    self.clock,
                    correlation_id,
                    session=session,
                    tables=self.tables,
                    shards=self.settings.outbox_shards,
                    keyring=self.keyring,
                )
                yield uow
                if uow.pending or uow.queued_tables:
                    raise RuntimeError("a read-only unit of work published events or queued writes")

    async def dispose(self) -> None:
        await self.notifier.close()
        await self.engine.dispose()

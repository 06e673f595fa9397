"""Dead letters kept where an operator can act on them (SPEC §7).

The consumer sends a message it cannot apply to ``<topic>.dlq`` and, from now on, also
records it in its own schema's ``dead_letters`` table: the original bytes, where they came
from, the error and how many times it failed. The table is what the operations API lists,
re-drives and discards; the ``.dlq`` topic stays as the broker-side copy.

A re-drive applies the stored event through the same handlers, in one transaction with the
row's new status, through the inbox like any delivery: an event the inbox already holds is
not applied again, so a re-drive is exactly once however often it is asked for.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .api import CtxDep, OpsKey, current_correlation_id
from .audit import record_audit
from .consumer import Handlers, Prepare, apply_events, is_transient
from .db import Database, UnitOfWork
from .events import UndecodableEvent, decode, parse
from .pagination import decode_cursor, encode_cursor
from .platform import Principal
from .problems import Conflict, NotFound
from .schemas import Strict

log = logging.getLogger(__name__)

Status = Literal["parked", "redriven", "discarded"]


def dead_letters_table(metadata: MetaData) -> Table:
    return Table(
        "dead_letters",
        metadata,
        Column("seq", BigInteger, Identity(), primary_key=True),
        Column("dead_letter_id", Text, nullable=False, unique=True),
        Column("topic", Text, nullable=False),
        Column("partition", Integer, nullable=False),
        Column("offset", BigInteger, nullable=False),
        Column("event_id", Text),
        Column("event_type", Text),
        Column("chain_id", Text),
        Column("key", Text),
        Column("payload", LargeBinary),
        Column("error", Text, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("first_failed_at", DateTime(timezone=True), nullable=False),
        Column("last_failed_at", DateTime(timezone=True), nullable=False),
        Column("status", Text, nullable=False, server_default="parked"),
        Column("resolved_at", DateTime(timezone=True)),
        Column("resolved_by", Text),
        UniqueConstraint("topic", "partition", "offset", name="dead_letters_position"),
        Index("dead_letters_chain_status", "chain_id", "status", "seq"),
    )


def create_dead_letters_table(op: Any, schema: str) -> None:
    """For a service's migration."""
    dead_letters_table(MetaData(schema=schema)).create(op.get_bind())


def _envelope_fields(value: bytes | None) -> dict[str, str | None]:
    """What can be told of a message that failed: its id, type and chain, when it is JSON at all."""
    try:
        doc = parse(value or b"")
    except UndecodableEvent:
        return {"event_id": None, "event_type": None, "chain_id": None}
    fields = {k: doc.get(k) for k in ("id", "type", "chainid")}
    clean = {k: v[:200] if isinstance(v, str) else None for k, v in fields.items()}
    return {"event_id": clean["id"], "event_type": clean["type"], "chain_id": clean["chainid"]}


async def record_dead_letter(
    db: Database,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: str,
    attempts: int,
) -> None:
    """Keep a dead-lettered message; recording the same position again (a batch redelivered after a
    crash) only updates its error and attempts."""
    table = db.tables.dead_letters
    now = db.clock.now()
    stmt = pg_insert(table).values(
        dead_letter_id=str(uuid.uuid4()),
        topic=topic,
        partition=partition,
        offset=offset,
        key=key.decode("utf-8", "replace")[:200] if key else None,
        payload=value,
        error=error[:4000],
        attempts=attempts,
        first_failed_at=now,
        last_failed_at=now,
        **_envelope_fields(value),
    )
    async with db.sessions() as session, session.begin():
        await session.execute(
            stmt.on_conflict_do_update(
                constraint="dead_letters_position",
                set_={"error": stmt.excluded.error, "attempts": stmt.excluded.attempts, "last_failed_at": now},
            )
        )


# ---- the operations API -------------------------------------------------------------------------


class DeadLetter(BaseModel):
    dead_letter_id: str
    topic: str
    partition: int
    offset: int
    event_id: str | None
    type: str | None
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    status: Status
    resolved_at: datetime | None = None
    resolved_by: str | None = None


class DeadLetterList(BaseModel):
    items: list[DeadLetter]
    next_cursor: str | None = None


class RedriveOutcome(BaseModel):
    dead_letter_id: str
    status: Status
    #: False when the inbox already held the event (it was applied before): nothing was applied again
    applied: bool


class RedriveRequest(Strict):
    type: str | None = None
    since: datetime | None = None


class RedriveSummary(BaseModel):
    redriven: int
    still_failing: list[str]


def _view(row: Any) -> DeadLetter:
    return DeadLetter(
        dead_letter_id=row.dead_letter_id,
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        event_id=row.event_id,
        type=row.event_type,
        error=row.error,
        attempts=row.attempts,
        first_failed_at=row.first_failed_at,
        last_failed_at=row.last_failed_at,
        status=row.status,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
    )


def _cursor(seq: int) -> str:
    return encode_cursor("dl", seq)


def _after(cursor: str) -> int:
    return decode_cursor("dl", cursor)


async def _locked(uow: UnitOfWork, principal: Principal, dead_letter_id: str) -> Any:
    """One of the caller's chain's dead letters, locked; another chain's does not exist (404)."""
    t = uow.tables.dead_letters
    row = (
        await uow.execute(
            select(t).where(t.c.dead_letter_id == dead_letter_id, t.c.chain_id == principal.chain_id).with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound("No such dead letter.")
    return row


def _resolve(uow: UnitOfWork, row: Any, status: Status, principal: Principal) -> Any:
    t = uow.tables.dead_letters
    return (
        update(t)
        .where(t.c.seq == row.seq)
        .values(status=status, resolved_at=uow.now(), resolved_by=principal.key_name)
        .returning(*t.c)
    )


def dead_letter_router(handlers: Handlers, prepare: Prepare | None) -> APIRouter:
    """``/v1/dead-letters`` of one service's consumer (its handlers re-drive)."""
    router = APIRouter(prefix="/v1/dead-letters", tags=["operations"])
    types = {cls.__name__: cls for cls in handlers}

    async def redrive_row(ctx: CtxDep, principal: Principal, dead_letter_id: str) -> RedriveOutcome:
        try:
            async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
                row = await _locked(uow, principal, dead_letter_id)
                if row.status != "parked":
                    raise Conflict(f"This dead letter is {row.status}; only a parked one can be re-driven.")
                try:
                    event = decode(row.payload or b"", types)
                except UndecodableEvent as exc:
                    raise Conflict(f"The message still cannot be decoded: {exc}") from exc
                if event.chainid != principal.chain_id:
                    raise NotFound("No such dead letter.")
                applied = await apply_events(uow, [event], handlers, prepare)
                uow.correlation_id = current_correlation_id()  # the audit entry belongs to the request
                done = (await uow.execute(_resolve(uow, row, "redriven", principal))).one()
                await record_audit(
                    uow,
                    principal,
                    action="dead_letter.redrive",
                    target=f"dead_letter:{dead_letter_id}",
                    before={"status": row.status, "event_id": row.event_id, "type": row.event_type},
                    after={"status": "redriven", "applied": bool(applied)},
                )
        except (Conflict, NotFound):
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            await _failed_again(ctx.db, dead_letter_id, repr(exc))
            raise Conflict(f"The event failed again: {exc!r}", dead_letter_id=dead_letter_id) from exc
        log.info("dead letter re-driven", extra={"dead_letter_id": dead_letter_id, "applied": bool(applied)})
        return RedriveOutcome(dead_letter_id=done.dead_letter_id, status=done.status, applied=bool(applied))

    @router.get("", response_model=DeadLetterList)
    async def list_dead_letters(
        ctx: CtxDep,
        principal: OpsKey,
        status: Status | None = None,
        type: Annotated[str | None, Query(max_length=100)] = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> DeadLetterList:
        """What this service's consumer dead-lettered for the caller's chain, oldest first."""
        t = ctx.db.tables.dead_letters
        stmt = select(t).where(t.c.chain_id == principal.chain_id)
        if status is not None:
            stmt = stmt.where(t.c.status == status)
        if type is not None:
            stmt = stmt.where(t.c.event_type == type)
        if cursor is not None:
            stmt = stmt.where(t.c.seq > _after(cursor))
        async with ctx.db.unit_of_work() as uow:
            rows = (await uow.execute(stmt.order_by(t.c.seq).limit(limit + 1))).all()
        page = rows[:limit]
        return DeadLetterList(
            items=[_view(r) for r in page], next_cursor=_cursor(page[-1].seq) if len(rows) > limit else None
        )

    @router.post("/redrive", response_model=RedriveSummary)
    async def redrive_many(ctx: CtxDep, principal: OpsKey, body: RedriveRequest | None = None) -> RedriveSummary:
        """Re-drive every parked dead letter of the chain (of ``type``, failed ``since``), oldest first."""
        t = ctx.db.tables.dead_letters
        stmt = select(t.c.dead_letter_id).where(t.c.chain_id == principal.chain_id, t.c.status == "parked")
        if body is not None and body.type is not None:
            stmt = stmt.where(t.c.event_type == body.type)
        if body is not None and body.since is not None:
            stmt = stmt.where(t.c.first_failed_at >= body.since)
        async with ctx.db.unit_of_work() as uow:
            ids = list((await uow.execute(stmt.order_by(t.c.seq).limit(10_000))).scalars())
        redriven, failing = 0, []
        for dead_letter_id in ids:
            try:
                await redrive_row(ctx, principal, dead_letter_id)
                redriven += 1
            except Conflict:
                failing.append(dead_letter_id)
        return RedriveSummary(redriven=redriven, still_failing=failing)

    @router.post("/{dead_letter_id}/redrive", response_model=RedriveOutcome)
    async def redrive_one(dead_letter_id: str, ctx: CtxDep, principal: OpsKey) -> RedriveOutcome:
        """Apply the stored event through the consumer's handlers, once; 409 if it fails again."""
        return await redrive_row(ctx, principal, dead_letter_id)

    @router.post("/{dead_letter_id}/discard", response_model=DeadLetter)
    async def discard(dead_letter_id: str, ctx: CtxDep, principal: OpsKey) -> DeadLetter:
        """Give up on a parked dead letter (kept, marked discarded)."""
        async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
            row = await _locked(uow, principal, dead_letter_id)
            if row.status != "parked":
                raise Conflict(f"This dead letter is {row.status}; only a parked one can be discarded.")
            done = (await uow.execute(_resolve(uow, row, "discarded", principal))).one()
            await record_audit(
                uow,
                principal,
                action="dead_letter.discard",
                target=f"dead_letter:{dead_letter_id}",
                before={"status": row.status, "event_id": row.event_id, "type": row.event_type},
                after={"status": "discarded"},
            )
        return _view(done)

    return router


async def _failed_again(db: Database, dead_letter_id: str, error: str) -> None:
    t = db.tables.dead_letters
    async with db.sessions() as session, session.begin():
        await session.execute(
            update(t)
            .where(t.c.dead_letter_id == dead_letter_id)
            .values(attempts=t.c.attempts + 1, error=error[:4000], last_failed_at=db.clock.now())
        )

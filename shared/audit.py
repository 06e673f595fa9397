"""The audit log (SPEC §7): every change made with an ``ops`` or ``platform`` key, recorded by the
service that made it, in the same transaction as the change.

An entry says who (the key's id and name), what (``action``, e.g. ``policy.update``, and its
``target``), the state before and after, and the request's correlation id. ``GET /v1/audit``
lists a chain's entries on each service; ``membershipctl audit`` merges the five in time order.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, MetaData, Table, Text, select
from sqlalchemy.dialects.postgresql import JSONB

from .api import CtxDep, OpsKey, current_correlation_id
from .db import UnitOfWork
from .pagination import decode_cursor, encode_cursor
from .platform import Principal
from .problems import InvalidRequest


def audit_table(metadata: MetaData) -> Table:
    return Table(
        "audit_log",
        metadata,
        Column("seq", BigInteger, Identity(), primary_key=True),
        Column("audit_id", Text, nullable=False, unique=True),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("chain_id", Text, nullable=False),
        Column("actor_key_id", Text, nullable=False),
        Column("actor_name", Text, nullable=False),
        Column("action", Text, nullable=False),
        Column("target", Text, nullable=False),
        Column("before", JSONB),
        Column("after", JSONB),
        Column("correlation_id", Text),
        Index("audit_log_chain", "chain_id", "seq"),
    )


def create_audit_table(op: Any, schema: str) -> None:
    """For a service's migration."""
    audit_table(MetaData(schema=schema)).create(op.get_bind())


def _jsonable(value: Any) -> Any:
    """Models, datetimes, dates... as JSON (the columns are JSONB)."""
    return to_jsonable_python(value)


async def record_audit(
    uow: UnitOfWork,
    principal: Principal,
    *,
    action: str,
    target: str,
    before: Any = None,
    after: Any = None,
    chain_id: str | None = None,
) -> None:
    """Record a change in the caller's transaction: it commits with the change or not at all.
    ``chain_id``: the chain changed, when not the caller's own (a platform key onboarding a chain)."""
    await uow.execute(
        uow.tables.audit.insert().values(
            audit_id=str(uuid.uuid4()),
            at=uow.now(),
            chain_id=chain_id or principal.chain_id,
            actor_key_id=principal.key_id,
            actor_name=principal.key_name,
            action=action,
            target=target,
            before=_jsonable(before),
            after=_jsonable(after),
            correlation_id=uow.correlation_id or current_correlation_id(),
        )
    )


class AuditEntry(BaseModel):
    audit_id: str
    at: datetime
    chain_id: str
    actor_key_id: str
    actor_name: str
    action: str
    target: str
    before: Any = None
    after: Any = None
    correlation_id: str | None = None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = None


def _cursor(seq: int) -> str:
    return encode_cursor("au", seq)


def _after(cursor: str) -> int:
    return decode_cursor("au", cursor)


def audit_router() -> APIRouter:
    router = APIRouter(prefix="/v1/audit", tags=["operations"])

    @router.get("", response_model=AuditPage)
    async def audit(
        ctx: CtxDep,
        principal: OpsKey,
        action: Annotated[str | None, Query(max_length=100)] = None,
        target: Annotated[str | None, Query(max_length=200)] = None,
        since: datetime | None = None,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> AuditPage:
        """The changes made to the caller's chain through this service, oldest first."""
        if since is not None and since.tzinfo is None:
            raise InvalidRequest("since must carry a UTC offset.")
        t = ctx.db.tables.audit
        stmt = select(t).where(t.c.chain_id == principal.chain_id)
        if action is not None:
            stmt = stmt.where(t.c.action == action)
        if target is not None:
            stmt = stmt.where(t.c.target == target)
        if since is not None:
            stmt = stmt.where(t.c.at >= since)
        if cursor is not None:
            stmt = stmt.where(t.c.seq > _after(cursor))
        async with ctx.db.unit_of_work() as uow:
            rows = (await uow.execute(stmt.order_by(t.c.seq).limit(limit + 1))).all()
        page = rows[:limit]
        return AuditPage(
            items=[
                AuditEntry(
                    audit_id=r.audit_id,
                    at=r.at,
                    chain_id=r.chain_id,
                    actor_key_id=r.actor_key_id,
                    actor_name=r.actor_name,
                    action=r.action,
                    target=r.target,
                    before=r.before,
                    after=r.after,
                    correlation_id=r.correlation_id,
                )
                for r in page
            ],
            next_cursor=_cursor(page[-1].seq) if len(rows) > limit else None,
        )

    return router

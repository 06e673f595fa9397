"""Re-publishing a chain's state, a page of members at a time, to rebuild a consumer's view (SPEC §7).

``membershipctl rebuild status-view`` asks points, tiering and benefits for ``POST /v1/ops/snapshots``
(ops keys) with ``{after?, limit?}``: each publishes one snapshot event (PointsSnapshot, TierSnapshot,
BenefitsSnapshot) for each of the caller's chain's members with ``member_id > after``, in member id
order, in one unit of work, and answers ``{published, next_after}`` (``next_after`` is null after the
last page). The events go through the service's outbox onto its own topic, keyed by member: a
snapshot reaches enrollment in order with the member's other events from that service, so a change
made while the rebuild runs is never overtaken by an older state.

The service says what a page publishes (``commands.publish_snapshots``, which locks the page's members
as its live changes do); the route, its validation and its audit entry (``status_view.rebuild``) are
written once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import Table, func, select

from .api import CtxDep, OpsKey, current_correlation_id
from .audit import record_audit
from .db import UnitOfWork
from .schemas import Strict

#: members per page by default, and at most
DEFAULT_LIMIT = 500
MAX_LIMIT = 1000


class SnapshotRequest(Strict):
    # the last member id of the previous page: any id, but no control characters (PostgreSQL text
    # cannot hold a NUL: it would fail in the database instead of here)
    after: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


class SnapshotPage(BaseModel):
    published: int  # snapshot events published (one per member of the page)
    next_after: str | None  # pass as ``after`` for the next page; null: this was the last one
    total: int | None = None  # the chain's members, on the first page (no ``after``) only


@dataclass(frozen=True)
class MemberPage:
    """The member ids of one page, and where the next one starts (None: this is the last)."""

    member_ids: list[str]
    next_after: str | None


async def member_page(uow: UnitOfWork, members: Table, *, chain_id: str, after: str | None, limit: int) -> MemberPage:
    """The chain's member ids after ``after`` in id order, at most ``limit`` (one more is read to know
    whether another page follows, so the last page is never an empty one)."""
    stmt = select(members.c.member_id).where(members.c.chain_id == chain_id)
    if after is not None:
        stmt = stmt.where(members.c.member_id > after)
    ids = list((await uow.execute(stmt.order_by(members.c.member_id).limit(limit + 1))).scalars())
    return MemberPage(member_ids=ids[:limit], next_after=ids[limit - 1] if len(ids) > limit else None)


async def chain_members(uow: UnitOfWork, members: Table, *, chain_id: str) -> int:
    count: int | None = await uow.session.scalar(
        select(func.count()).select_from(members).where(members.c.chain_id == chain_id)
    )
    return int(count or 0)


class PublishSnapshots(Protocol):
    """A service's ``commands.publish_snapshots``."""

    async def __call__(self, uow: UnitOfWork, *, chain_id: str, after: str | None, limit: int) -> SnapshotPage: ...


def snapshot_router(publish: PublishSnapshots, *, event_type: str) -> APIRouter:
    """``POST /v1/ops/snapshots`` of one service: ``publish(uow, chain_id=, after=, limit=)`` publishes a
    page of ``event_type`` snapshots; the audit entry commits with them."""
    router = APIRouter(prefix="/v1/ops", tags=["operations"])

    @router.post("/snapshots", response_model=SnapshotPage)
    async def snapshots(ctx: CtxDep, principal: OpsKey, body: SnapshotRequest | None = None) -> SnapshotPage:
        """Re-publish a page of the chain's members' state as snapshot events, to rebuild the status view (ops)."""
        req = body or SnapshotRequest()
        async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
            page = await publish(uow, chain_id=principal.chain_id, after=req.after, limit=req.limit)
            await record_audit(
                uow,
                principal,
                action="status_view.rebuild",
                target=f"chain:{principal.chain_id}",
                before={"after": req.after, "limit": req.limit},
                after={"event_type": event_type, "published": page.published, "next_after": page.next_after},
            )
        return page

    return router

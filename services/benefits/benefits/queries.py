"""What the API reads: a member's benefits and discount. Reads raise ``shared.problems`` errors,
never HTTP ones; another chain's member does not exist for the caller's key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, select

from shared.db import UnitOfWork
from shared.problems import NotFound

from . import domain, schemas
from .store import SqlStore
from .tables import members, policies


def _view(e: domain.Entitlement, now: datetime) -> schemas.BenefitView:
    return schemas.BenefitView(
        benefit_id=e.benefit_id,
        code=e.code,
        valid_from=e.valid_from,
        valid_until=e.valid_until,
        remaining_uses=e.remaining_uses,
        status=domain.effective_status(e, now),
        kind=e.kind,
        tier=e.tier,
        value_fen=e.value_fen,
        percent=e.percent,
        period=e.period,
    )


async def _member(uow: UnitOfWork, *, chain_id: str, member_id: str) -> Row[Any]:
    row: Row[Any] | None = (
        await uow.execute(select(members).where(members.c.member_id == member_id, members.c.chain_id == chain_id))
    ).first()
    if row is None:
        # another chain's member does not exist for this key
        raise NotFound("No such member.")
    return row


async def benefits_of(
    uow: UnitOfWork, *, chain_id: str, member_id: str, status: domain.Status | None = None
) -> schemas.BenefitList:
    await _member(uow, chain_id=chain_id, member_id=member_id)
    now = uow.now()
    held = domain.by_status(await SqlStore(uow).entitlements(member_id=member_id), status, now)
    return schemas.BenefitList(items=[_view(e, now) for e in held])


async def discount_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.Discount:
    member = await _member(uow, chain_id=chain_id, member_id=member_id)
    policy = await policies.current(uow.session, chain_id)
    return schemas.Discount(discount_percent=policy.discount_percent(member.tier), tier=member.tier)

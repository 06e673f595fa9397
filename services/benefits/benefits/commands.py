"""What the API changes: redeeming a benefit. Commands take the unit of work first and keyword-only
data, raise ``shared.problems`` errors (never HTTP ones) and publish through ``uow.publish``."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update

from shared.db import UnitOfWork
from shared.events import BenefitRedeemed
from shared.problems import Conflict, NotFound

from . import domain, schemas
from .store import benefit_event, entitlement_of
from .tables import entitlements, redemptions


async def redeem(
    uow: UnitOfWork, *, chain_id: str, member_id: str, benefit_id: str, clinic_id: str
) -> schemas.Redemption:
    """Use a benefit once at a clinic."""
    # FOR UPDATE: concurrent redemptions of one benefit queue here, and each sees the uses the
    # previous one left, so a 1-use benefit is redeemed once; a revocation waits for us too.
    row = (
        await uow.execute(
            select(entitlements)
            .where(
                entitlements.c.benefit_id == benefit_id,
                entitlements.c.member_id == member_id,
                entitlements.c.chain_id == chain_id,
            )
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound("No such benefit for this member.")
    e = entitlement_of(row)
    now = uow.now()
    refusal = domain.redemption_refusal(e, now)
    if refusal is not None:
        raise Conflict(
            refusal,
            benefit_id=benefit_id,
            benefit_status=domain.effective_status(e, now),
            remaining_uses=e.remaining_uses,
        )
    remaining, status = domain.after_redemption(e)
    updated = (
        await uow.execute(
            update(entitlements)
            .where(entitlements.c.benefit_id == benefit_id)
            .values(remaining_uses=remaining, status=status, updated_at=now)
            .returning(*entitlements.c)
        )
    ).one()
    redemption_id = str(uuid.uuid4())
    await uow.execute(
        redemptions.insert().values(
            redemption_id=redemption_id,
            benefit_id=benefit_id,
            member_id=member_id,
            chain_id=chain_id,
            clinic_id=clinic_id,
            remaining_uses=remaining,
            redeemed_at=now,
        )
    )
    uow.publish(
        benefit_event(BenefitRedeemed, entitlement_of(updated), clinic_id=clinic_id),
        member_id=member_id,
        chain_id=chain_id,
        time=now,
    )
    return schemas.Redemption(
        redemption_id=redemption_id,
        benefit_id=benefit_id,
        code=e.code,
        remaining_uses=remaining,
        member_id=member_id,
        clinic_id=clinic_id,
        redeemed_at=now,
    )

"""What the API changes: redeeming a benefit; a rebuild's snapshots of the members' benefits. Commands
take the unit of work first and keyword-only data, raise ``shared.problems`` errors (never HTTP ones)
and publish through ``uow.publish``."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, text, update

from shared.db import UnitOfWork
from shared.events import BenefitRedeemed, BenefitsSnapshot, HeldBenefit
from shared.problems import Conflict, NotFound
from shared.snapshots import SnapshotPage, chain_members, member_page

from . import domain, schemas
from .store import SqlStore, benefit_event, entitlement_of
from .tables import entitlements, members, redemptions


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


# ---- a rebuild of the status view ---------------------------------------------------------------


def benefits_snapshot(held: list[domain.Entitlement], now: datetime) -> BenefitsSnapshot:
    """The member's entitlements the status view shows now (:func:`domain.in_status_view`), oldest first."""
    return BenefitsSnapshot(
        benefits=[
            HeldBenefit(
                benefit_id=e.benefit_id, code=e.code, remaining_uses=e.remaining_uses, valid_until=e.valid_until
            )
            for e in held
            if domain.in_status_view(e, now)
        ]
    )


async def publish_snapshots(uow: UnitOfWork, *, chain_id: str, after: str | None, limit: int) -> SnapshotPage:
    """A BenefitsSnapshot of each of a page of the chain's members (ids after ``after``, in id order).

    Benefits has no per-member lock that every writer takes (grants are inserts kept unique by
    constraints), so the page holds the entitlements table in SHARE mode while it reads and publishes:
    a grant, redemption or revocation in flight commits (its event ahead of the snapshot) before the
    read, and one that starts meanwhile waits for the snapshot (its event after it). Writers wait for
    one page, a few milliseconds; readers never do."""
    await uow.execute(text(f"LOCK TABLE {entitlements.schema}.{entitlements.name} IN SHARE MODE"))
    page = await member_page(uow, members, chain_id=chain_id, after=after, limit=limit)
    total = await chain_members(uow, members, chain_id=chain_id) if after is None else None
    now = uow.now()
    held = await SqlStore(uow).entitlements_of(member_ids=page.member_ids)
    for member_id in page.member_ids:
        uow.publish(benefits_snapshot(held[member_id], now), member_id=member_id, chain_id=chain_id)
    return SnapshotPage(published=len(page.member_ids), next_after=page.next_after, total=total)

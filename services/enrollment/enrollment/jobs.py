"""Enrollment's scheduled jobs (``async def job(ctx, run: JobRun)``): completing due referrals."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, select, true, update

from shared.api import ServiceContext, current_correlation_id
from shared.db import UnitOfWork
from shared.events import ReferralCompleted
from shared.service import JobRun

from . import domain
from .tables import members, policies, purchases, referrals


async def complete_referrals(ctx: ServiceContext, run: JobRun) -> int:
    """Complete the referrals of ``run``'s chains that are due as of ``run.as_of``; how many."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        return await complete_due_referrals(uow, as_of=run.as_of, chain_ids=run.chain_ids)


async def complete_due_referrals(
    uow: UnitOfWork, *, as_of: datetime, chain_ids: Sequence[str], limit: int = 500
) -> int:
    """Complete pending referrals whose referee made a purchase of at least the policy's amount
    that has outlived the return window (pending_days) without being refunded below it
    (:func:`.domain.completes_referral`).

    Safe on several replicas: pending rows are claimed with SKIP LOCKED and completed in the
    same transaction; the referrer's count is an atomic increment (the 3rd gets the larger voucher).
    """
    chains = (
        (
            await uow.execute(
                select(referrals.c.chain_id)
                .where(referrals.c.status == "pending", referrals.c.chain_id.in_(chain_ids))
                .distinct()
            )
        )
        .scalars()
        .all()
    )
    completed = 0
    for chain_id in chains:
        policy = await policies.current(uow.session, chain_id)
        due = await due_referrals(
            uow,
            chain_id=chain_id,
            window_end=domain.referral_window_end(as_of, policy.pending_days),
            min_purchase_fen=policy.referral.min_purchase_fen,
            limit=limit,
        )
        for row in due:
            count = (
                await uow.execute(
                    update(members)
                    .where(members.c.member_id == row.referrer_id)
                    .values(referrals_completed=members.c.referrals_completed + 1)
                    .returning(members.c.referrals_completed)
                )
            ).scalar_one()
            await uow.execute(
                update(referrals)
                .where(referrals.c.referee_id == row.referee_id)
                .values(status="completed", purchase_id=row.purchase_id, referral_count=count, completed_at=as_of)
            )
            uow.publish(
                ReferralCompleted(
                    referrer_id=row.referrer_id,
                    referee_id=row.referee_id,
                    purchase_id=row.purchase_id,
                    completed_at=as_of,
                    referral_count=count,
                ),
                member_id=row.referrer_id,
                chain_id=chain_id,
                time=as_of,
            )
            completed += 1
    return completed


async def due_referrals(
    uow: UnitOfWork, *, chain_id: str, window_end: datetime, min_purchase_fen: int, limit: int
) -> Sequence[Row[Any]]:
    """The chain's pending referrals that are due, claimed (``referee_id, referrer_id, purchase_id``):
    :func:`.domain.referral_purchase` in SQL, for each pending referee at once (the integration
    tests check that the two agree)."""
    candidate = (
        select(purchases.c.purchase_id)
        .where(
            purchases.c.member_id == referrals.c.referee_id,
            purchases.c.amount_fen - purchases.c.refunded_fen >= min_purchase_fen,
            purchases.c.occurred_at <= window_end,
        )
        .order_by(purchases.c.occurred_at, purchases.c.purchase_id)
        .limit(1)
        .lateral("candidate")
    )
    rows: Sequence[Row[Any]] = (
        await uow.execute(
            select(referrals.c.referee_id, referrals.c.referrer_id, candidate.c.purchase_id)
            .select_from(referrals.join(candidate, true()))
            .where(referrals.c.chain_id == chain_id, referrals.c.status == "pending")
            .order_by(referrals.c.created_at)
            .limit(limit)
            .with_for_update(of=referrals, skip_locked=True)
        )
    ).all()
    return rows

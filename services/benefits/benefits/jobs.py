"""Benefits' scheduled jobs: the expiry sweep and the birthday vouchers.

Every job has the one signature ``async def job(ctx, run: JobRun) -> <what it did>``: the
schedule runs it for every chain as of now, the operations endpoint for the caller's chain as of
the time asked. Jobs must be safe on several replicas at once: the database prevents double effects.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, Text, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.api import ServiceContext
from shared.db import UnitOfWork
from shared.events import BenefitGranted
from shared.policy import BenefitRule, Policy
from shared.service import JobRun

from . import domain
from .store import benefit_event, entitlement_of
from .tables import entitlements, members, policies

EXPIRY_SWEEP_BATCH = 5000
BIRTHDAY_BATCH = 1000


async def expire_due_benefits(ctx: ServiceContext, run: JobRun) -> int:
    """Mark the chains' active entitlements past valid_until at ``run.as_of`` as expired, a batch per run.

    SKIP LOCKED lets replicas sweep side by side and never waits for a redemption in flight
    (which re-checks validity under its own lock anyway). Reads already report such rows as
    expired; the sweep keeps the stored status honest for the partial unique index and for reports.
    """
    async with ctx.db.unit_of_work() as uow:
        due = (
            select(entitlements.c.benefit_id)
            .where(
                entitlements.c.status == "active",
                entitlements.c.valid_until <= run.as_of,
                entitlements.c.chain_id.in_(run.chain_ids),
            )
            .limit(EXPIRY_SWEEP_BATCH)
            .with_for_update(skip_locked=True)
        )
        result = await uow.execute(
            update(entitlements)
            .where(entitlements.c.benefit_id.in_(due.scalar_subquery()))
            .values(status="expired", updated_at=uow.now())
        )
        return int(result.rowcount or 0)


def _birthday_rules(policy: Policy) -> dict[BenefitRule, list[str]]:
    """The policy's birthday rules and the tiers that have each (the default: one rule, every tier)."""
    tiers_of: dict[BenefitRule, list[str]] = {}
    for tier in policy.tiers:
        rule = domain.birthday_rule(policy, tier.code)
        if rule is not None:
            tiers_of.setdefault(rule, []).append(tier.code)
    return tiers_of


def _due_birthday_vouchers(
    *, chain_id: str, tiers: list[str], window: domain.BirthdayWindow, voucher: domain.Grant, limit: int
) -> Any:
    """INSERT .. SELECT of ``window``'s vouchers for the chain's members born in its month who hold
    none for its year; in member order, so that concurrent inserts take their locks in one order."""
    m, e = members, entitlements
    held = (
        select(e.c.benefit_id)
        .where(e.c.member_id == m.c.member_id, e.c.code == voucher.code, e.c.period == voucher.period)
        .exists()
    )
    columns = {
        "benefit_id": func.gen_random_uuid().cast(Text),
        "member_id": m.c.member_id,
        "chain_id": m.c.chain_id,
        "code": literal(voucher.code, Text),
        "kind": literal(voucher.kind, Text),
        "value_fen": literal(voucher.value_fen, BigInteger),
        "valid_from": literal(voucher.valid_from, DateTime(timezone=True)),
        "valid_until": literal(voucher.valid_until, DateTime(timezone=True)),
        "remaining_uses": literal(voucher.remaining_uses, Integer),
        "status": literal("active", Text),
        "source_event_id": literal(f"birthday:{voucher.period}", Text),
        "period": literal(voucher.period, Text),
    }
    due = (
        select(*columns.values())
        .where(
            m.c.chain_id == chain_id,
            m.c.birthday.is_not(None),
            func.extract("month", m.c.birthday) == window.birth_month,
            m.c.tier.in_(tiers),
            ~held,
        )
        .order_by(m.c.member_id)
        .limit(limit)
    )
    return pg_insert(e).from_select(list(columns), due).on_conflict_do_nothing().returning(*e.c)


async def _grant_birthday_batch(
    uow: UnitOfWork, *, chain_id: str, tz: tzinfo, as_of: datetime, limit: int = BIRTHDAY_BATCH
) -> int:
    """Grant up to ``limit`` (per birth month and rule) of the chain's birthday vouchers due at ``as_of``.

    One voucher per member and year: (member, code, period) is unique in the database, so
    replicas, re-runs and concurrent ops runs never grant twice. The advisory lock queues
    concurrent runs of one chain, so the second sees the first's vouchers instead of racing
    on the same keys (and deadlocking); it is an optimisation, the unique key is the guarantee.
    """
    await uow.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"benefits.birthday:{chain_id}"))))
    policy = await policies.current(uow.session, chain_id)
    granted = 0
    for rule, tiers in _birthday_rules(policy).items():
        for window in domain.birthday_windows(as_of, tz):
            voucher = domain.birthday_voucher(policy, rule, window, as_of)
            rows = (
                await uow.execute(
                    _due_birthday_vouchers(chain_id=chain_id, tiers=tiers, window=window, voucher=voucher, limit=limit)
                )
            ).all()
            for row in rows:
                uow.publish(
                    benefit_event(BenefitGranted, entitlement_of(row)), member_id=row.member_id, chain_id=chain_id
                )
            granted += len(rows)
    return granted


async def grant_birthday_vouchers(ctx: ServiceContext, run: JobRun) -> int:
    """Grant every birthday voucher due at ``run.as_of`` in the run's chains (each in its own time
    zone), a batch per transaction; returns how many were granted."""
    granted = 0
    for chain_id in run.chain_ids:
        tz = await ctx.platform.timezone(chain_id)
        while True:
            async with ctx.db.unit_of_work() as uow:
                batch = await _grant_birthday_batch(uow, chain_id=chain_id, tz=tz, as_of=run.as_of)
            granted += batch
            if batch == 0:
                break
    return granted

"""Benefits' event handlers (grants and revocations) and commands (reads and redemptions from the API).

Every function takes the unit of work first and keyword-only data; it raises
``shared.problems`` errors, never HTTP ones. Handlers run inside the consumer's batch
transaction: they never commit and publish only through ``uow.publish``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import BigInteger, DateTime, Integer, Text, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.api import ServiceContext
from shared.db import UnitOfWork
from shared.events import (
    BenefitGranted,
    BenefitRedeemed,
    BenefitRevoked,
    CloudEvent,
    MemberEnrolled,
    PolicyChanged,
    PurchaseRecorded,
    ReferralCompleted,
    TierChanged,
)
from shared.policy import BenefitRule, Policy
from shared.problems import Conflict, NotFound

from . import domain, schemas
from .tables import entitlements, large_purchases, members, policies, redemptions, tier_changes

log = logging.getLogger(__name__)
EXPIRY_SWEEP_BATCH = 5000
BIRTHDAY_BATCH = 1000
#: handlers have no platform context: days and tier-years are dated in the default chain time zone
DEFAULT_TZ = ZoneInfo("Asia/Shanghai")


# ---- rows <-> domain ----------------------------------------------------------------------------


def _entitlement(row: Any) -> domain.Entitlement:
    return domain.Entitlement(
        benefit_id=row.benefit_id,
        code=row.code,
        kind=row.kind,
        tier=row.tier,
        status=row.status,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        remaining_uses=row.remaining_uses,
        value_fen=row.value_fen,
        percent=row.percent,
        period=row.period,
    )


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


def _benefit_event(cls: type, row: Any, **extra: Any) -> Any:
    return cls(
        benefit_id=row.benefit_id,
        code=row.code,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        remaining_uses=row.remaining_uses,
        value_fen=row.value_fen,
        **extra,
    )


# ---- queries ------------------------------------------------------------------------------------


async def _entitlements_of(uow: UnitOfWork, *, member_id: str) -> list[domain.Entitlement]:
    rows = (
        await uow.execute(
            select(entitlements)
            .where(entitlements.c.member_id == member_id)
            .order_by(entitlements.c.created_at, entitlements.c.code)
        )
    ).all()
    return [_entitlement(r) for r in rows]


async def _member(uow: UnitOfWork, *, chain_id: str, member_id: str) -> Any:
    row = (
        await uow.execute(select(members).where(members.c.member_id == member_id, members.c.chain_id == chain_id))
    ).first()
    if row is None:
        # another chain's member does not exist for this key
        raise NotFound("No such member.")
    return row


async def _set_status(
    uow: UnitOfWork, targets: Sequence[domain.Entitlement], status: domain.Status, *, ends_at: datetime | None = None
) -> list[Any]:
    """Move active entitlements to ``status`` (and end their validity at ``ends_at`` if given);
    returns the rows that were still active."""
    if not targets:
        return []
    values: dict[str, Any] = {"status": status, "updated_at": uow.now()}
    if ends_at is not None:
        values["valid_until"] = func.least(entitlements.c.valid_until, ends_at)  # LEAST skips NULL
    return list(
        (
            await uow.execute(
                update(entitlements)
                .where(
                    entitlements.c.benefit_id.in_([e.benefit_id for e in targets]), entitlements.c.status == "active"
                )
                .values(**values)
                .returning(*entitlements.c)
            )
        ).all()
    )


async def _grant(
    uow: UnitOfWork, event: CloudEvent, grants: Sequence[tuple[str, domain.Grant]], *, source_id: str | None = None
) -> None:
    """Insert the grants in one statement and announce the ones inserted.

    ON CONFLICT DO NOTHING makes a duplicate impossible, not an error: (member, code, event) is
    unique, so is (member, code, period), and so is an active tier-bound code per member
    (a partial unique index). ``source_id`` (default: the event's id) tells apart several grants
    of one code that one event causes (care packs for several purchases).
    """
    if not grants:
        return
    rows = [
        dict(
            benefit_id=str(uuid.uuid4()),
            member_id=member_id,
            chain_id=event.chainid,
            code=g.code,
            kind=g.kind,
            tier=g.tier,
            value_fen=g.value_fen,
            percent=g.percent,
            valid_from=g.valid_from,
            valid_until=g.valid_until,
            remaining_uses=g.remaining_uses,
            status="active",
            source_event_id=source_id or event.id,
            period=g.period,
        )
        for member_id, g in grants
    ]
    inserted = (
        await uow.execute(pg_insert(entitlements).values(rows).on_conflict_do_nothing().returning(*entitlements.c))
    ).all()
    for row in inserted:
        uow.publish(_benefit_event(BenefitGranted, row), member_id=row.member_id, chain_id=row.chain_id)


async def _sync_tier_benefits(
    uow: UnitOfWork, event: CloudEvent, *, member_id: str, tier: str, as_of: datetime, new_tier_year: bool = False
) -> None:
    """Make the member's tier-bound benefits those of ``tier``: expire, replace, revoke, then grant.

    The order matters: an expired, replaced or revoked row must stop being 'active' before a new
    row of the same code is inserted (one active tier-bound row per code). A tier-year's skin
    check is keyed by the tier-year's first local day, so the same review twice grants one.
    """
    policy = await policies.current(uow.session, event.chainid)
    if tier not in {t.code for t in policy.tiers}:
        log.warning("tier unknown to the policy; benefits left as they are", extra={"tier": tier, "event_id": event.id})
        return
    changes = domain.tier_benefit_changes(
        policy,
        tier,
        await _entitlements_of(uow, member_id=member_id),
        as_of,
        tier_year=domain.tier_year_period(as_of, DEFAULT_TZ),
        new_tier_year=new_tier_year,
    )
    await _set_status(uow, changes.expire, "expired")
    # the previous tier-year's unused allotment ends now; Revoked tells the status view it is gone
    for row in await _set_status(uow, changes.replace, "expired", ends_at=as_of):
        uow.publish(_benefit_event(BenefitRevoked, row), member_id=member_id, chain_id=row.chain_id)
    for row in await _set_status(uow, changes.revoke, "revoked"):
        uow.publish(_benefit_event(BenefitRevoked, row), member_id=member_id, chain_id=row.chain_id)
    await _grant(uow, event, [(member_id, g) for g in changes.grant])


# ---- event handlers -----------------------------------------------------------------------------


async def on_member_enrolled(event: CloudEvent, uow: UnitOfWork) -> None:
    """A new member holds the lowest tier, unless a TierChanged got here first (other topic, no order)."""
    d: MemberEnrolled = event.data  # type: ignore[assignment]
    lowest = (await policies.current(uow.session, event.chainid)).tiers[0].code
    stmt = pg_insert(members).values(
        member_id=d.member_id,
        chain_id=event.chainid,
        tier=lowest,
        tier_since=d.enrolled_at,
        birthday=d.birthday,
        updated_at=uow.now(),
    )
    # a row made by an earlier TierChanged keeps its tier and gains the birthday
    tier = await uow.session.scalar(
        stmt.on_conflict_do_update(
            index_elements=[members.c.member_id],
            set_={"birthday": stmt.excluded.birthday},
        ).returning(members.c.tier)
    )
    await _sync_tier_benefits(uow, event, member_id=d.member_id, tier=tier, as_of=d.enrolled_at)


async def on_tier_changed(event: CloudEvent, uow: UnitOfWork) -> None:
    """Grant the new tier's benefits the member lacks; revoke tier-bound ones it does not have."""
    d: TierChanged = event.data  # type: ignore[assignment]
    stmt = pg_insert(members).values(
        member_id=event.subject, chain_id=event.chainid, tier=d.to_tier, tier_since=d.effective_at, updated_at=uow.now()
    )
    # tiering's events of one member arrive in order; an older effective time is a replay and changes nothing
    applied = await uow.session.scalar(
        stmt.on_conflict_do_update(
            index_elements=[members.c.member_id],
            set_={
                "tier": stmt.excluded.tier,
                "tier_since": stmt.excluded.tier_since,
                "updated_at": stmt.excluded.updated_at,
            },
            where=members.c.tier_since <= stmt.excluded.tier_since,
        ).returning(members.c.tier)
    )
    if applied is None:
        log.info("stale TierChanged ignored", extra={"event_id": event.id})
        return
    await uow.execute(
        pg_insert(tier_changes)
        .values(member_id=event.subject, effective_at=d.effective_at, to_tier=d.to_tier)
        .on_conflict_do_nothing()
    )
    # a review starts a new tier-year: the annual allotments (skin check) are granted afresh
    await _sync_tier_benefits(
        uow, event, member_id=event.subject, tier=d.to_tier, as_of=d.effective_at, new_tier_year=d.reason == "review"
    )
    # purchases made since the change took effect that were applied before it arrived: judged again
    policy = await policies.current(uow.session, event.chainid)
    since = (
        await uow.execute(
            select(large_purchases).where(
                large_purchases.c.member_id == event.subject, large_purchases.c.occurred_at >= d.effective_at
            )
        )
    ).all()
    for p in since:
        grants = domain.purchase_grants(
            policy, tier=d.to_tier, purchase_id=p.purchase_id, amount_fen=p.amount_fen, occurred_at=p.occurred_at
        )
        await _grant(uow, event, [(event.subject, g) for g in grants], source_id=f"{event.id}/{p.purchase_id}")


async def on_referral_completed(event: CloudEvent, uow: UnitOfWork) -> None:
    """The referrer gets a voucher (the milestone one on the 3rd referral); the referee a welcome skin check."""
    d: ReferralCompleted = event.data  # type: ignore[assignment]
    policy = await policies.current(uow.session, event.chainid)
    await _grant(
        uow,
        event,
        [
            (d.referrer_id, domain.referrer_reward(policy, d.referral_count, d.completed_at)),
            (d.referee_id, domain.referee_reward(policy, d.completed_at)),
        ],
    )


async def on_purchase_recorded(event: CloudEvent, uow: UnitOfWork) -> None:
    """A large enough purchase earns a care pack when its member held a tier with one at the time the
    purchase was made (once per purchase).

    The tier held then comes from the TierChanged events seen so far; one that arrives later (it
    travels on another topic) judges again the purchases made since it took effect, so the outcome
    does not depend on which event came first. The purchase that itself lifts a member to gold was
    made before the upgrade took effect, and earns none.
    """
    d: PurchaseRecorded = event.data  # type: ignore[assignment]
    policy = await policies.current(uow.session, event.chainid)
    if d.amount_fen < policy.care_pack_min_purchase_fen:
        return  # the common case costs no query
    known = await uow.session.scalar(select(members.c.member_id).where(members.c.member_id == d.member_id))
    if known is None:
        log.warning("purchase of a member this service does not know; no care pack", extra={"event_id": event.id})
        return
    await uow.execute(
        pg_insert(large_purchases)
        .values(
            purchase_id=d.purchase_id,
            member_id=d.member_id,
            amount_fen=d.amount_fen,
            occurred_at=d.occurred_at,
        )
        .on_conflict_do_nothing()
    )
    tier = (
        await uow.execute(
            select(tier_changes.c.to_tier)
            .where(tier_changes.c.member_id == d.member_id, tier_changes.c.effective_at <= d.occurred_at)
            .order_by(tier_changes.c.effective_at.desc())
            .limit(1)
        )
    ).scalar()
    tier = tier or policy.tiers[0].code  # no tier change before the purchase: the lowest tier
    grants = domain.purchase_grants(
        policy, tier=tier, purchase_id=d.purchase_id, amount_fen=d.amount_fen, occurred_at=d.occurred_at
    )
    await _grant(uow, event, [(d.member_id, g) for g in grants])


HANDLERS = {
    MemberEnrolled: on_member_enrolled,
    TierChanged: on_tier_changed,
    ReferralCompleted: on_referral_completed,
    PurchaseRecorded: on_purchase_recorded,
    PolicyChanged: policies.on_policy_changed,
}


# ---- commands (API) -----------------------------------------------------------------------------


async def benefits_of(
    uow: UnitOfWork, *, chain_id: str, member_id: str, status: domain.Status | None = None
) -> schemas.BenefitList:
    await _member(uow, chain_id=chain_id, member_id=member_id)
    now = uow.now()
    held = domain.by_status(await _entitlements_of(uow, member_id=member_id), status, now)
    return schemas.BenefitList(items=[_view(e, now) for e in held])


async def discount_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.Discount:
    member = await _member(uow, chain_id=chain_id, member_id=member_id)
    policy = await policies.current(uow.session, chain_id)
    return schemas.Discount(discount_percent=policy.discount_percent(member.tier), tier=member.tier)


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
    e = _entitlement(row)
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
        _benefit_event(BenefitRedeemed, updated, clinic_id=clinic_id), member_id=member_id, chain_id=chain_id, time=now
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


# ---- schedules ----------------------------------------------------------------------------------


async def expire_due_benefits(ctx: ServiceContext) -> int:
    """Mark active entitlements past valid_until as expired, a batch at a time.

    SKIP LOCKED lets replicas sweep side by side and never waits for a redemption in flight
    (which re-checks validity under its own lock anyway). Reads already report such rows as
    expired; the sweep keeps the stored status honest for the partial unique index and for reports.
    """
    async with ctx.db.unit_of_work() as uow:
        due = (
            select(entitlements.c.benefit_id)
            .where(entitlements.c.status == "active", entitlements.c.valid_until <= uow.now())
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


async def grant_birthday_vouchers(
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
                uow.publish(_benefit_event(BenefitGranted, row), member_id=row.member_id, chain_id=chain_id)
            granted += len(rows)
    return granted


async def chain_timezone(ctx: ServiceContext, chain_id: str) -> tzinfo:
    chain = await ctx.platform.chain(chain_id)
    try:
        return ZoneInfo(chain.timezone) if chain is not None else DEFAULT_TZ
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown chain time zone; using Asia/Shanghai", extra={"chain_id": chain_id})
        return DEFAULT_TZ


async def run_birthday_schedule(
    ctx: ServiceContext, *, as_of: datetime | None = None, chain_ids: Sequence[str] | None = None
) -> tuple[int, datetime]:
    """Grant every birthday voucher due at ``as_of`` (default now) in the given chains (default all),
    a batch per transaction; returns (how many were granted, as_of)."""
    as_of = as_of or ctx.db.clock.now()
    if chain_ids is None:
        chain_ids = [c.chain_id for c in await ctx.platform.all_chains()]
    granted = 0
    for chain_id in chain_ids:
        tz = await chain_timezone(ctx, chain_id)
        while True:
            async with ctx.db.unit_of_work() as uow:
                batch = await grant_birthday_vouchers(uow, chain_id=chain_id, tz=tz, as_of=as_of)
            granted += batch
            if batch == 0:
                break
    return granted, as_of


async def grant_due_birthday_vouchers(ctx: ServiceContext) -> int:
    """The schedule: every chain's birthday vouchers due now."""
    granted, _ = await run_birthday_schedule(ctx)
    return granted

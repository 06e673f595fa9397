"""Points' event handlers (earning, reversal) and commands (redemption, adjustment, reads).

Every change of a member's points follows one path: lock the member's row, load the
open lots into a :class:`domain.Wallet`, let the domain change it, then :func:`post`
writes the lots, the ledger entry and the balance and publishes ``PointsChanged``, all
in the caller's transaction. The row lock makes one member's changes serial, so the
balance after each entry is exact even with API requests and the consumer racing.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import Database, UnitOfWork
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    EntryType,
    ExpiringPoints,
    MemberEnrolled,
    PendingPoints,
    PointsChanged,
    PointsExpiringSoon,
    PolicyChanged,
    PurchaseRecorded,
    PurchaseRefunded,
    ReferralCompleted,
)
from shared.platform import chain_timezone
from shared.policy import Policy
from shared.problems import Conflict, InvalidRequest, NotFound

from . import domain, schemas
from .tables import behaviour_months, entries, lots, members, policies, purchase_points, refunds

log = logging.getLogger(__name__)


class UnknownMember(ValueError):
    """An event for a member this service never saw enrol: a bad event (dead-lettered)."""


class UnknownPurchase(ValueError):
    """A refund of a purchase this service never saw: a bad event (dead-lettered)."""


# ---- the member's wallet ------------------------------------------------------------------------


async def timezone_of(uow: UnitOfWork, chain_id: str) -> ZoneInfo:
    """The chain's time zone (days and months are local)."""
    return await chain_timezone(uow.session, chain_id)


def _lot_of(row: Any) -> domain.Lot:
    return domain.Lot(
        lot_id=row.lot_id,
        points=row.points,
        remaining=row.remaining,
        earned_at=row.earned_at,
        available_at=row.available_at,
        expires_on=row.expires_on,
        qualifying=row.qualifying,
        purchase_id=row.purchase_id,
        expiry_notified=row.expiry_notified_at is not None,
    )


async def _locked_member(uow: UnitOfWork, member_id: str) -> Any:
    return (await uow.execute(select(members).where(members.c.member_id == member_id).with_for_update())).first()


async def _wallet_of(uow: UnitOfWork, member: Any) -> domain.Wallet:
    rows = (
        await uow.execute(
            select(lots)
            .where(lots.c.member_id == member.member_id, lots.c.remaining > 0)
            .order_by(lots.c.earned_at, lots.c.lot_id)
        )
    ).all()
    tz = await timezone_of(uow, member.chain_id)
    return domain.Wallet(balance=member.balance, lots=[_lot_of(r) for r in rows], tz=tz)


async def _wallets_of(uow: UnitOfWork, locked: list[Any], tz: ZoneInfo) -> dict[str, domain.Wallet]:
    """The wallets of several locked members of one chain, from one query."""
    held: dict[str, list[domain.Lot]] = {m.member_id: [] for m in locked}
    rows = await uow.execute(select(lots).where(lots.c.member_id.in_(list(held)), lots.c.remaining > 0))
    for r in rows:
        held[r.member_id].append(_lot_of(r))
    return {m.member_id: domain.Wallet(balance=m.balance, lots=held[m.member_id], tz=tz) for m in locked}


async def policy_of(uow: UnitOfWork, chain_id: str) -> Policy:
    """The chain's current programme: what tiering last published (the default until then). A change
    applies to the events processed after it; entries already recorded are never recomputed."""
    return await policies.current(uow.session, chain_id)


async def _wallet_for_event(uow: UnitOfWork, event: CloudEvent, member_id: str) -> tuple[Any, domain.Wallet]:
    """Lock the member an event is about; an unknown member, or one of another chain, is a bad event.

    The locked member and wallet are kept in the unit of work's memo: the next event of the same
    member in the batch (the same transaction, so the lock is still held) reuses them."""
    held = uow.memo.get(("wallet", member_id))
    if held is None:
        member = await _locked_member(uow, member_id)
        if member is None or member.chain_id != event.chainid:
            raise UnknownMember(f"{event.type} {event.id} names member {member_id}, unknown in chain {event.chainid}")
        held = uow.memo[("wallet", member_id)] = (member, await _wallet_of(uow, member))
    member, wallet = held
    if member.chain_id != event.chainid:
        raise UnknownMember(f"{event.type} {event.id} names member {member_id}, unknown in chain {event.chainid}")
    return member, wallet


def _member_of(event: CloudEvent) -> str | None:
    """The member whose points an event changes (None: it changes no one's)."""
    d = event.data
    if isinstance(d, ReferralCompleted):
        return d.referrer_id
    if isinstance(d, PurchaseRecorded):
        return d.member_id
    if isinstance(d, ActivityRecorded | PurchaseRefunded):
        return d.member_id or event.subject
    return None


async def prepare(events: list[CloudEvent], uow: UnitOfWork) -> None:
    """A consumer batch's reads, set-based: lock every member the batch changes (one query, in
    member order), load their wallets (one query) and which of its purchases already earned (one
    query). The handlers find them in the memo; a member this batch enrols is loaded on first use."""
    ids = sorted({m for e in events if (m := _member_of(e)) and ("wallet", m) not in uow.memo})
    if ids:
        locked = (
            await uow.execute(
                select(members).where(members.c.member_id.in_(ids)).order_by(members.c.member_id).with_for_update()
            )
        ).all()
        held: dict[str, list[domain.Lot]] = {m.member_id: [] for m in locked}
        if held:
            for r in await uow.execute(
                select(lots)
                .where(lots.c.member_id.in_(list(held)), lots.c.remaining > 0)
                .order_by(lots.c.earned_at, lots.c.lot_id)
            ):
                held[r.member_id].append(_lot_of(r))
        for m in locked:
            wallet = domain.Wallet(balance=m.balance, lots=held[m.member_id], tz=await timezone_of(uow, m.chain_id))
            uow.memo[("wallet", m.member_id)] = (m, wallet)
    purchases = [e.data.purchase_id for e in events if isinstance(e.data, PurchaseRecorded)]
    if purchases:
        earned = set(
            (
                await uow.execute(
                    select(purchase_points.c.purchase_id).where(purchase_points.c.purchase_id.in_(purchases))
                )
            ).scalars()
        )
        uow.memo.update({("purchase earned", pid): pid in earned for pid in purchases})


async def _first_earning(uow: UnitOfWork, row: dict[str, Any]) -> bool:
    """Record what a purchase earned; False when it was recorded before (a second delivery of the
    purchase under another event id changes nothing). Known from the batch's :func:`prepare`, the
    row is queued; otherwise the primary key decides."""
    key = ("purchase earned", row["purchase_id"])
    if key in uow.memo:
        if uow.memo[key]:
            return False
        uow.memo[key] = True
        uow.insert_later(purchase_points, row)
        return True
    first = (
        await uow.execute(
            pg_insert(purchase_points).values(**row).on_conflict_do_nothing().returning(purchase_points.c.purchase_id)
        )
    ).first()
    return first is not None


async def _wallet_for_request(uow: UnitOfWork, *, chain_id: str, member_id: str) -> tuple[Any, domain.Wallet]:
    """Lock a member for an API write; another chain's member does not exist (404)."""
    member = await _locked_member(uow, member_id)
    if member is None or member.chain_id != chain_id:
        raise NotFound("No such member.")
    return member, await _wallet_of(uow, member)


async def post(
    uow: UnitOfWork,
    *,
    member: Any,
    wallet: domain.Wallet,
    delta: int,
    entry_type: EntryType,
    reason: str,
    occurred_at: datetime,
    qualifying: bool,
    source_event_id: str | None = None,
    capped: int = 0,
    as_of: datetime | None = None,
) -> str:
    """Write the wallet's lot changes, one ledger entry and the new balance; publish PointsChanged.

    ``wallet.balance`` is already the balance after ``delta``: the ledger's ``balance``
    column is always the sum of the member's deltas up to and including the entry.
    PointsChanged carries the member's available, pending and expiring points as of ``as_of``
    (default now), computed from the wallet already in hand: the status view's copy of them
    is as of the member's last points change.
    """
    entry_id = str(uuid.uuid4())
    # queued, not executed: a consumer batch writes each table once (see UnitOfWork.insert_later)
    for lot in wallet.created:
        uow.insert_later(
            lots,
            {
                "lot_id": lot.lot_id,
                "member_id": member.member_id,
                "points": lot.points,
                "remaining": lot.remaining,
                "earned_at": lot.earned_at,
                "available_at": lot.available_at,
                "expires_on": lot.expires_on,
                "qualifying": lot.qualifying,
                "purchase_id": lot.purchase_id,
                "entry_id": entry_id,
            },
        )
    for lot in wallet.changed.values():
        uow.update_later(lots, {"lot_id": lot.lot_id}, {"remaining": lot.remaining})
    now = uow.now()
    uow.insert_later(
        entries,
        {
            "entry_id": entry_id,
            "member_id": member.member_id,
            "chain_id": member.chain_id,
            "delta": delta,
            "balance": wallet.balance,
            "entry_type": entry_type,
            "reason": reason,
            "source_event_id": source_event_id,
            "occurred_at": occurred_at,
            "qualifying": qualifying,
            "capped": capped,
            "created_at": now,
        },
    )
    if delta != 0:
        uow.update_later(members, {"member_id": member.member_id}, {"balance": wallet.balance, "updated_at": now})
        view_at = as_of or now
        uow.publish(
            PointsChanged(
                entry_id=entry_id,
                delta=delta,
                balance=wallet.balance,
                entry_type=entry_type,
                reason=reason,
                source_event_id=source_event_id,
                occurred_at=occurred_at,
                qualifying=qualifying,
                available=wallet.available(view_at),
                pending=wallet.pending(view_at),
                expiring=[ExpiringPoints(points=g.points, expires_on=g.expires_on) for g in wallet.expiring(view_at)],
                pending_until=[PendingPoints(points=n, available_at=at) for at, n in wallet.pending_until(view_at)],
            ),
            member_id=member.member_id,
            chain_id=member.chain_id,
        )
    wallet.created.clear()
    wallet.changed.clear()
    return entry_id


# ---- event handlers -----------------------------------------------------------------------------


async def on_member_enrolled(event: CloudEvent, uow: UnitOfWork) -> None:
    d: MemberEnrolled = event.data  # type: ignore[assignment]
    await uow.execute(
        pg_insert(members)
        .values(
            member_id=d.member_id,
            chain_id=event.chainid,
            enrolled_at=d.enrolled_at,
            balance=0,
        )
        .on_conflict_do_nothing()
    )


def _too_late_to_earn(uow: UnitOfWork, wallet: domain.Wallet, policy: Policy, earned_at: datetime) -> bool:
    """Decided when the event is processed: a credit whose lot would have expired by now earns none."""
    return domain.expired_on_arrival(earned_at, uow.now(), wallet.tz, policy.expiry_months)


async def _record_not_awarded(
    uow: UnitOfWork,
    *,
    member: Any,
    wallet: domain.Wallet,
    policy: Policy,
    points: int,
    earned_at: datetime,
    what: str,
    source_event_id: str,
) -> None:
    """A credit whose lot would already have expired earns nothing (see domain.expired_on_arrival);
    a zero ledger entry (no PointsChanged) records what was withheld and why."""
    lapsed_on = domain.expires_on(earned_at, wallet.tz, policy.expiry_months)
    await post(
        uow,
        member=member,
        wallet=wallet,
        delta=0,
        entry_type="earn",
        reason=f"{what}: {points} points not awarded, they expired on {lapsed_on} before it arrived",
        occurred_at=earned_at,
        qualifying=True,
        source_event_id=source_event_id,
    )


async def on_purchase_recorded(event: CloudEvent, uow: UnitOfWork) -> None:
    d: PurchaseRecorded = event.data  # type: ignore[assignment]
    member, wallet = await _wallet_for_event(uow, event, d.member_id)
    policy = await policy_of(uow, event.chainid)
    points = domain.purchase_points(d.amount_fen, d.occurred_at, member.enrolled_at, policy.earning)
    late = points > 0 and _too_late_to_earn(uow, wallet, policy, d.occurred_at)
    lot_id = str(uuid.uuid4()) if points > 0 and not late else None
    # what the purchase earned is kept (even 0) so its refunds can be reversed in proportion;
    # the primary key makes a second delivery of the purchase a no-op
    if not await _first_earning(
        uow,
        {
            "purchase_id": d.purchase_id,
            "member_id": d.member_id,
            "amount_fen": d.amount_fen,
            "earned": 0 if late else points,
            "lot_id": lot_id,
        },
    ):
        return
    if late:
        await _record_not_awarded(
            uow,
            member=member,
            wallet=wallet,
            policy=policy,
            points=points,
            earned_at=d.occurred_at,
            what="purchase",
            source_event_id=event.id,
        )
        return
    if lot_id is None:
        return
    wallet.credit(domain.new_lot(lot_id, points, d.occurred_at, policy, wallet.tz, purchase_id=d.purchase_id))
    new_member = domain.in_new_member_window(d.occurred_at, member.enrolled_at, policy.earning)
    await post(
        uow,
        member=member,
        wallet=wallet,
        delta=points,
        entry_type="earn",
        reason="purchase (new member)" if new_member else "purchase",
        occurred_at=d.occurred_at,
        qualifying=True,
        source_event_id=event.id,
    )


async def on_activity_recorded(event: CloudEvent, uow: UnitOfWork) -> None:
    d: ActivityRecorded = event.data  # type: ignore[assignment]
    policy = await policy_of(uow, event.chainid)
    points = domain.behaviour_points(d.kind, policy.earning)
    member, wallet = await _wallet_for_event(uow, event, d.member_id or event.subject)
    if points == 0:
        return
    # checked before the cap: points that could never be used do not use up the month's allowance
    if _too_late_to_earn(uow, wallet, policy, d.occurred_at):
        await _record_not_awarded(
            uow,
            member=member,
            wallet=wallet,
            policy=policy,
            points=points,
            earned_at=d.occurred_at,
            what=f"activity:{d.kind}",
            source_event_id=event.id,
        )
        return
    month = domain.local_month(d.occurred_at, wallet.tz)
    key = (behaviour_months.c.member_id == member.member_id, behaviour_months.c.month == month)
    so_far = await uow.session.scalar(select(behaviour_months.c.awarded).where(*key)) or 0
    awarded, capped = domain.capped_award(points, so_far, policy.earning.behaviour_monthly_cap)
    if awarded:
        await uow.execute(
            pg_insert(behaviour_months)
            .values(
                member_id=member.member_id,
                month=month,
                awarded=awarded,
            )
            .on_conflict_do_update(
                index_elements=["member_id", "month"], set_={"awarded": behaviour_months.c.awarded + awarded}
            )
        )
        wallet.credit(domain.new_lot(str(uuid.uuid4()), awarded, d.occurred_at, policy, wallet.tz))
    # a fully capped activity still gets its (zero) entry: the ledger shows what the cap withheld
    await post(
        uow,
        member=member,
        wallet=wallet,
        delta=awarded,
        entry_type="earn",
        reason=f"activity:{d.kind}",
        occurred_at=d.occurred_at,
        qualifying=True,
        source_event_id=event.id,
        capped=capped,
    )


async def on_referral_completed(event: CloudEvent, uow: UnitOfWork) -> None:
    d: ReferralCompleted = event.data  # type: ignore[assignment]
    policy = await policy_of(uow, event.chainid)
    points = policy.referral.referrer_points
    member, wallet = await _wallet_for_event(uow, event, d.referrer_id)
    if points <= 0:
        return
    if _too_late_to_earn(uow, wallet, policy, d.completed_at):
        await _record_not_awarded(
            uow,
            member=member,
            wallet=wallet,
            policy=policy,
            points=points,
            earned_at=d.completed_at,
            what="referral",
            source_event_id=event.id,
        )
        return
    wallet.credit(domain.new_lot(str(uuid.uuid4()), points, d.completed_at, policy, wallet.tz))
    await post(
        uow,
        member=member,
        wallet=wallet,
        delta=points,
        entry_type="earn",
        reason="referral",
        occurred_at=d.completed_at,
        qualifying=True,
        source_event_id=event.id,
    )


async def on_purchase_refunded(event: CloudEvent, uow: UnitOfWork) -> None:
    d: PurchaseRefunded = event.data  # type: ignore[assignment]
    member, wallet = await _wallet_for_event(uow, event, d.member_id or event.subject)
    purchase = (
        await uow.execute(select(purchase_points).where(purchase_points.c.purchase_id == d.purchase_id))
    ).first()
    if purchase is None or purchase.member_id != member.member_id:
        raise UnknownPurchase(f"refund {d.refund_id} of purchase {d.purchase_id} unknown for member {member.member_id}")
    points = domain.reversal_points(
        earned=purchase.earned,
        amount_fen=purchase.amount_fen,
        refunded_before_fen=purchase.refunded_fen,
        refund_fen=d.amount_fen,
        reversed_before=purchase.reversed,
    )
    first = (
        await uow.execute(
            pg_insert(refunds)
            .values(
                purchase_id=d.purchase_id,
                refund_id=d.refund_id,
                amount_fen=d.amount_fen,
                reversed=points,
                occurred_at=d.occurred_at,
            )
            .on_conflict_do_nothing()
            .returning(refunds.c.refund_id)
        )
    ).first()
    if first is None:
        return  # this refund was reversed before
    await uow.execute(
        update(purchase_points)
        .where(purchase_points.c.purchase_id == d.purchase_id)
        .values(
            refunded_fen=purchase_points.c.refunded_fen + d.amount_fen, reversed=purchase_points.c.reversed + points
        )
    )
    if points == 0:
        return
    wallet.debit(points, first_lot_id=purchase.lot_id)
    await post(
        uow,
        member=member,
        wallet=wallet,
        delta=-points,
        entry_type="reverse",
        reason="refund",
        occurred_at=d.occurred_at,
        qualifying=True,
        source_event_id=event.id,
    )


async def on_policy_changed(event: CloudEvent, uow: UnitOfWork) -> None:
    """Keep tiering's new programme version; events processed from now on earn under it."""
    await policies.on_policy_changed(event, uow)


HANDLERS = {
    PolicyChanged: on_policy_changed,
    MemberEnrolled: on_member_enrolled,
    PurchaseRecorded: on_purchase_recorded,
    ActivityRecorded: on_activity_recorded,
    ReferralCompleted: on_referral_completed,
    PurchaseRefunded: on_purchase_refunded,
}


# ---- expiry (a schedule, and an ops endpoint) ---------------------------------------------------

EXPIRY_BATCH = 500


@dataclass
class ExpiryRun:
    """What one expiry pass did: lots announced, lots (and points) taken away, as of when."""

    as_of: datetime
    warned: int = 0
    expired: int = 0
    expired_points: int = 0


async def run_expiry(db: Database, *, chain_ids: Iterable[str], as_of: datetime | None = None) -> ExpiryRun:
    """Announce the lots expiring soon, then take away the expired ones, as of ``as_of`` (default now).

    Safe on several replicas, and to run again: a lot is announced in the transaction that
    marks it announced (claimed FOR UPDATE SKIP LOCKED), and an expired lot is emptied under
    its member's row lock, so neither can happen twice. Only a lot's ``remaining`` expires:
    what redemptions spent from it is not taken again, and an empty lot is neither announced
    nor expired. Days are the chain's local days.
    """
    run = ExpiryRun(as_of or db.clock.now())
    for chain_id in chain_ids:
        while await warn_expiring_lots(db, chain_id=chain_id, run=run) == EXPIRY_BATCH:
            pass
        while await expire_lapsed_lots(db, chain_id=chain_id, run=run) == EXPIRY_BATCH:
            pass
    return run


async def warn_expiring_lots(db: Database, *, chain_id: str, run: ExpiryRun) -> int:
    """Publish PointsExpiringSoon for a batch of the chain's unannounced lots inside the notice window."""
    async with db.unit_of_work() as uow:
        tz = await timezone_of(uow, chain_id)
        policy = await policy_of(uow, chain_id)
        first_day, last_day = domain.warning_window(run.as_of, tz, policy.expiring_notice_days)
        # SKIP LOCKED: a lot another replica is announcing, or a redemption is changing, is left
        # for the next run rather than waited for (and announced twice)
        claimed = (
            await uow.execute(
                select(lots.c.lot_id, lots.c.member_id, lots.c.remaining, lots.c.expires_on)
                .join(members, members.c.member_id == lots.c.member_id)
                .where(
                    members.c.chain_id == chain_id,
                    lots.c.remaining > 0,
                    lots.c.expiry_notified_at.is_(None),
                    lots.c.expires_on >= first_day,
                    lots.c.expires_on <= last_day,
                )
                .order_by(lots.c.expires_on, lots.c.lot_id)
                .limit(EXPIRY_BATCH)
                .with_for_update(of=lots, skip_locked=True)
            )
        ).all()
        for lot in claimed:
            uow.publish(
                PointsExpiringSoon(points=lot.remaining, expires_on=lot.expires_on, lot_id=lot.lot_id),
                member_id=lot.member_id,
                chain_id=chain_id,
            )
        if claimed:
            await uow.execute(
                update(lots)
                .where(lots.c.lot_id.in_([lot.lot_id for lot in claimed]))
                .values(expiry_notified_at=uow.now())
            )
    run.warned += len(claimed)
    return len(claimed)


async def expire_lapsed_lots(db: Database, *, chain_id: str, run: ExpiryRun) -> int:
    """Take away what is left in a batch of members' lots whose expiry day has passed: one ``expire``
    entry (and PointsChanged) per member. Returns how many members were claimed."""
    async with db.unit_of_work() as uow:
        tz = await timezone_of(uow, chain_id)
        today = run.as_of.astimezone(tz).date()
        lapsed = select(lots.c.member_id).where(lots.c.remaining > 0, lots.c.expires_on < today)
        # the member row is every points change's lock: a member busy elsewhere is skipped, not waited
        # for, and picked up by the next run
        claimed = (
            await uow.execute(
                select(members)
                .where(members.c.chain_id == chain_id, members.c.member_id.in_(lapsed))
                .order_by(members.c.member_id)
                .limit(EXPIRY_BATCH)
                .with_for_update(skip_locked=True)
            )
        ).all()
        wallets = await _wallets_of(uow, claimed, tz) if claimed else {}
        for member in claimed:
            wallet = wallets[member.member_id]
            taken = wallet.expire(run.as_of)
            points = sum(n for _, n in taken)
            if points:
                await post(
                    uow,
                    member=member,
                    wallet=wallet,
                    delta=-points,
                    entry_type="expire",
                    reason="expiry",
                    occurred_at=run.as_of,
                    qualifying=False,
                    as_of=run.as_of,
                )
            run.expired += len(taken)
            run.expired_points += points
    return len(claimed)


# ---- commands from the API ----------------------------------------------------------------------


async def redeem(
    uow: UnitOfWork, *, chain_id: str, member_id: str, req: schemas.RedemptionRequest
) -> schemas.PostedRedemption:
    """Spend available points, oldest lots first; 409 when they do not cover it or the balance is negative."""
    member, wallet = await _wallet_for_request(uow, chain_id=chain_id, member_id=member_id)
    policy = await policy_of(uow, chain_id)
    now = uow.now()
    try:
        wallet.redeem(req.points, now)
    except domain.NegativeBalance as exc:
        raise Conflict(str(exc), balance=exc.balance) from exc
    except domain.InsufficientPoints as exc:
        raise Conflict(str(exc), available=exc.available) from exc
    entry_id = await post(
        uow,
        member=member,
        wallet=wallet,
        delta=-req.points,
        entry_type="redeem",
        reason=req.reason,
        occurred_at=now,
        qualifying=False,
    )
    return schemas.PostedRedemption(
        entry_id=entry_id, balance=wallet.balance, value_fen=domain.redemption_value_fen(req.points, policy)
    )


async def adjust(
    uow: UnitOfWork, *, chain_id: str, member_id: str, req: schemas.AdjustmentRequest
) -> schemas.PostedEntry:
    """An operator's correction: a credit is a non-qualifying lot available at once (repaying any
    debt first); a debit takes the soonest-expiring lots and may leave the balance negative."""
    member, wallet = await _wallet_for_request(uow, chain_id=chain_id, member_id=member_id)
    now = uow.now()
    if req.delta > 0:
        policy = await policy_of(uow, chain_id)
        wallet.credit(
            domain.new_lot(str(uuid.uuid4()), req.delta, now, policy, wallet.tz, qualifying=False, pending=False)
        )
    else:
        wallet.debit(-req.delta)
    entry_id = await post(
        uow,
        member=member,
        wallet=wallet,
        delta=req.delta,
        entry_type="adjust",
        reason=req.reason,
        occurred_at=now,
        qualifying=False,
    )
    return schemas.PostedEntry(entry_id=entry_id, balance=wallet.balance)


async def _member_of_chain(uow: UnitOfWork, *, chain_id: str, member_id: str) -> Any:
    member = (await uow.execute(select(members).where(members.c.member_id == member_id))).first()
    if member is None or member.chain_id != chain_id:
        raise NotFound("No such member.")
    return member


async def points_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.PointsSummary:
    member = await _member_of_chain(uow, chain_id=chain_id, member_id=member_id)
    wallet = await _wallet_of(uow, member)
    now = uow.now()
    return schemas.PointsSummary(
        balance=wallet.balance,
        available=wallet.available(now),
        pending=wallet.pending(now),
        lots=[
            schemas.LotView(
                lot_id=lot.lot_id,
                remaining=lot.remaining,
                earned_at=lot.earned_at,
                expires_on=lot.expires_on,
                available_at=lot.available_at,
            )
            for lot in wallet.open_lots()
        ],
        expiring=[schemas.ExpiringView(points=g.points, expires_on=g.expires_on) for g in wallet.expiring(now)],
    )


async def policy_view(uow: UnitOfWork, *, chain_id: str) -> schemas.PolicyView:
    policy = await policy_of(uow, chain_id)
    return schemas.PolicyView(version=policy.version, policy=policy.model_dump(mode="json"))


_CURSOR_PREFIX = "e1:"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError("not a ledger cursor")
        seq = int(raw.removeprefix(_CURSOR_PREFIX))
        if not 0 < seq < 2**63:
            raise ValueError("not a ledger cursor")
        return seq
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            "The cursor is not one this API returned.",
            errors=[{"location": ["query", "cursor"], "message": "invalid cursor", "type": "value_error"}],
        ) from exc


async def ledger_of(
    uow: UnitOfWork, *, chain_id: str, member_id: str, cursor: str | None, limit: int
) -> schemas.LedgerPage:
    """A page of the member's entries, newest first; the cursor is the last entry's position."""
    before = decode_cursor(cursor) if cursor else None
    await _member_of_chain(uow, chain_id=chain_id, member_id=member_id)
    stmt = select(entries).where(entries.c.member_id == member_id)
    if before is not None:
        stmt = stmt.where(entries.c.seq < before)
    rows = (await uow.execute(stmt.order_by(entries.c.seq.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    return schemas.LedgerPage(
        items=[
            schemas.LedgerEntry(
                entry_id=r.entry_id,
                member_id=r.member_id,
                delta=r.delta,
                balance=r.balance,
                entry_type=r.entry_type,
                reason=r.reason,
                source_event_id=r.source_event_id,
                occurred_at=r.occurred_at,
                qualifying=r.qualifying,
                capped=r.capped,
                created_at=r.created_at,
            )
            for r in page
        ],
        next_cursor=encode_cursor(page[-1].seq) if len(rows) > limit else None,
    )

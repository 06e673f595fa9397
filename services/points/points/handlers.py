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
import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import Database, UnitOfWork
from shared.events import (
    ActivityRecorded, CloudEvent, EntryType, MemberEnrolled, PointsChanged, PointsExpiringSoon, PurchaseRecorded,
    PurchaseRefunded, ReferralCompleted,
)
from shared.platform import chains
from shared.problems import Conflict, InvalidRequest, NotFound

from . import domain, schemas
from .tables import behaviour_months, entries, lots, members, purchase_points, refunds

log = logging.getLogger(__name__)


class UnknownMember(ValueError):
    """An event for a member this service never saw enrol: a bad event (dead-lettered)."""


class UnknownPurchase(ValueError):
    """A refund of a purchase this service never saw: a bad event (dead-lettered)."""


# ---- the member's wallet ------------------------------------------------------------------------

_TZ_TTL_SECONDS = 60.0
_timezones: dict[str, tuple[float, ZoneInfo]] = {}


async def timezone_of(uow: UnitOfWork, chain_id: str) -> ZoneInfo:
    """The chain's time zone (days and months are local), cached briefly per process."""
    hit = _timezones.get(chain_id)
    if hit and time.monotonic() - hit[0] < _TZ_TTL_SECONDS:
        return hit[1]
    name = await uow.session.scalar(
        select(chains.c.timezone).where(chains.c.chain_id == chain_id))
    try:
        tz = ZoneInfo(name or domain.DEFAULT_TIMEZONE)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone for chain; using the default", extra={"chain_id": chain_id})
        tz = ZoneInfo(domain.DEFAULT_TIMEZONE)
    _timezones[chain_id] = (time.monotonic(), tz)
    return tz


def _lot_of(row: Any) -> domain.Lot:
    return domain.Lot(lot_id=row.lot_id, points=row.points, remaining=row.remaining, earned_at=row.earned_at,
                      available_at=row.available_at, expires_on=row.expires_on, qualifying=row.qualifying,
                      purchase_id=row.purchase_id, expiry_notified=row.expiry_notified_at is not None)


async def _locked_member(uow: UnitOfWork, member_id: str) -> Any:
    return (await uow.execute(select(members).where(members.c.member_id == member_id).with_for_update())).first()


async def _wallet_of(uow: UnitOfWork, member: Any) -> domain.Wallet:
    rows = (await uow.execute(select(lots).where(lots.c.member_id == member.member_id, lots.c.remaining > 0)
                              .order_by(lots.c.earned_at, lots.c.lot_id))).all()
    tz = await timezone_of(uow, member.chain_id)
    return domain.Wallet(balance=member.balance, lots=[_lot_of(r) for r in rows], tz=tz)


async def _wallet_for_event(uow: UnitOfWork, event: CloudEvent, member_id: str) -> tuple[Any, domain.Wallet]:
    """Lock the member an event is about; an unknown member, or one of another chain, is a bad event."""
    member = await _locked_member(uow, member_id)
    if member is None or member.chain_id != event.chainid:
        raise UnknownMember(f"{event.type} {event.id} names member {member_id}, unknown in chain {event.chainid}")
    return member, await _wallet_of(uow, member)


async def _wallet_for_request(uow: UnitOfWork, *, chain_id: str, member_id: str) -> tuple[Any, domain.Wallet]:
    """Lock a member for an API write; another chain's member does not exist (404)."""
    member = await _locked_member(uow, member_id)
    if member is None or member.chain_id != chain_id:
        raise NotFound("No such member.")
    return member, await _wallet_of(uow, member)


async def post(uow: UnitOfWork, *, member: Any, wallet: domain.Wallet, delta: int, entry_type: EntryType,
               reason: str, occurred_at: datetime, qualifying: bool, source_event_id: str | None = None,
               capped: int = 0) -> str:
    """Write the wallet's lot changes, one ledger entry and the new balance; publish PointsChanged.

    ``wallet.balance`` is already the balance after ``delta``: the ledger's ``balance``
    column is always the sum of the member's deltas up to and including the entry.
    """
    entry_id = str(uuid.uuid4())
    if wallet.created:
        await uow.execute(lots.insert(), [
            {"lot_id": lot.lot_id, "member_id": member.member_id, "points": lot.points, "remaining": lot.remaining,
             "earned_at": lot.earned_at, "available_at": lot.available_at, "expires_on": lot.expires_on,
             "qualifying": lot.qualifying, "purchase_id": lot.purchase_id, "entry_id": entry_id}
            for lot in wallet.created])
    if wallet.changed:
        await uow.execute(
            update(lots).where(lots.c.lot_id == bindparam("b_lot_id")).values(remaining=bindparam("b_remaining")),
            [{"b_lot_id": lot.lot_id, "b_remaining": lot.remaining} for lot in wallet.changed.values()])
    now = uow.now()
    await uow.execute(entries.insert().values(
        entry_id=entry_id, member_id=member.member_id, chain_id=member.chain_id, delta=delta,
        balance=wallet.balance, entry_type=entry_type, reason=reason, source_event_id=source_event_id,
        occurred_at=occurred_at, qualifying=qualifying, capped=capped, created_at=now))
    if delta != 0:
        await uow.execute(update(members).where(members.c.member_id == member.member_id)
                          .values(balance=wallet.balance, updated_at=now))
        uow.publish(PointsChanged(
            entry_id=entry_id, delta=delta, balance=wallet.balance, entry_type=entry_type, reason=reason,
            source_event_id=source_event_id, occurred_at=occurred_at, qualifying=qualifying,
            available=wallet.available(now), pending=wallet.pending(now),
        ), member_id=member.member_id, chain_id=member.chain_id)
    wallet.created.clear()
    wallet.changed.clear()
    return entry_id


# ---- event handlers -----------------------------------------------------------------------------


async def on_member_enrolled(event: CloudEvent, uow: UnitOfWork) -> None:
    d: MemberEnrolled = event.data  # type: ignore[assignment]
    await uow.execute(pg_insert(members).values(
        member_id=d.member_id, chain_id=event.chainid, enrolled_at=d.enrolled_at, balance=0,
    ).on_conflict_do_nothing())


async def on_purchase_recorded(event: CloudEvent, uow: UnitOfWork) -> None:
    d: PurchaseRecorded = event.data  # type: ignore[assignment]
    member, wallet = await _wallet_for_event(uow, event, d.member_id)
    policy = domain.policy_for(event.chainid)
    points = domain.purchase_points(d.amount_fen, d.occurred_at, member.enrolled_at, policy.earning)
    lot_id = str(uuid.uuid4()) if points > 0 else None
    # what the purchase earned is kept (even 0) so its refunds can be reversed in proportion;
    # the primary key makes a second delivery of the purchase a no-op
    first = (await uow.execute(pg_insert(purchase_points).values(
        purchase_id=d.purchase_id, member_id=d.member_id, amount_fen=d.amount_fen, earned=points, lot_id=lot_id,
    ).on_conflict_do_nothing().returning(purchase_points.c.purchase_id))).first()
    if first is None or lot_id is None:
        return
    wallet.credit(domain.new_lot(lot_id, points, d.occurred_at, policy, wallet.tz, purchase_id=d.purchase_id))
    new_member = domain.in_new_member_window(d.occurred_at, member.enrolled_at, policy.earning)
    await post(uow, member=member, wallet=wallet, delta=points, entry_type="earn",
               reason="purchase (new member)" if new_member else "purchase", occurred_at=d.occurred_at,
               qualifying=True, source_event_id=event.id)


async def on_activity_recorded(event: CloudEvent, uow: UnitOfWork) -> None:
    d: ActivityRecorded = event.data  # type: ignore[assignment]
    policy = domain.policy_for(event.chainid)
    points = domain.behaviour_points(d.kind, policy.earning)
    member, wallet = await _wallet_for_event(uow, event, d.member_id or event.subject)
    if points == 0:
        return
    month = domain.local_month(d.occurred_at, wallet.tz)
    key = (behaviour_months.c.member_id == member.member_id, behaviour_months.c.month == month)
    so_far = await uow.session.scalar(select(behaviour_months.c.awarded).where(*key)) or 0
    awarded, capped = domain.capped_award(points, so_far, policy.earning.behaviour_monthly_cap)
    if awarded:
        await uow.execute(pg_insert(behaviour_months).values(
            member_id=member.member_id, month=month, awarded=awarded,
        ).on_conflict_do_update(index_elements=["member_id", "month"],
                                set_={"awarded": behaviour_months.c.awarded + awarded}))
        wallet.credit(domain.new_lot(str(uuid.uuid4()), awarded, d.occurred_at, policy, wallet.tz))
    # a fully capped activity still gets its (zero) entry: the ledger shows what the cap withheld
    await post(uow, member=member, wallet=wallet, delta=awarded, entry_type="earn", reason=f"activity:{d.kind}",
               occurred_at=d.occurred_at, qualifying=True, source_event_id=event.id, capped=capped)


async def on_referral_completed(event: CloudEvent, uow: UnitOfWork) -> None:
    d: ReferralCompleted = event.data  # type: ignore[assignment]
    policy = domain.policy_for(event.chainid)
    points = policy.referral.referrer_points
    member, wallet = await _wallet_for_event(uow, event, d.referrer_id)
    if points <= 0:
        return
    wallet.credit(domain.new_lot(str(uuid.uuid4()), points, d.completed_at, policy, wallet.tz))
    await post(uow, member=member, wallet=wallet, delta=points, entry_type="earn", reason="referral",
               occurred_at=d.completed_at, qualifying=True, source_event_id=event.id)


async def on_purchase_refunded(event: CloudEvent, uow: UnitOfWork) -> None:
    d: PurchaseRefunded = event.data  # type: ignore[assignment]
    member, wallet = await _wallet_for_event(uow, event, d.member_id or event.subject)
    purchase = (await uow.execute(select(purchase_points).where(
        purchase_points.c.purchase_id == d.purchase_id))).first()
    if purchase is None or purchase.member_id != member.member_id:
        raise UnknownPurchase(f"refund {d.refund_id} of purchase {d.purchase_id} unknown for member "
                              f"{member.member_id}")
    points = domain.reversal_points(earned=purchase.earned, amount_fen=purchase.amount_fen,
                                    refunded_before_fen=purchase.refunded_fen, refund_fen=d.amount_fen,
                                    reversed_before=purchase.reversed)
    first = (await uow.execute(pg_insert(refunds).values(
        purchase_id=d.purchase_id, refund_id=d.refund_id, amount_fen=d.amount_fen, reversed=points,
        occurred_at=d.occurred_at,
    ).on_conflict_do_nothing().returning(refunds.c.refund_id))).first()
    if first is None:
        return  # this refund was reversed before
    await uow.execute(update(purchase_points).where(purchase_points.c.purchase_id == d.purchase_id).values(
        refunded_fen=purchase_points.c.refunded_fen + d.amount_fen,
        reversed=purchase_points.c.reversed + points))
    if points == 0:
        return
    wallet.debit(points, first_lot_id=purchase.lot_id)
    await post(uow, member=member, wallet=wallet, delta=-points, entry_type="reverse", reason="refund",
               occurred_at=d.occurred_at, qualifying=True, source_event_id=event.id)


HANDLERS = {
    MemberEnrolled: on_member_enrolled,
    PurchaseRecorded: on_purchase_recorded,
    ActivityRecorded: on_activity_recorded,
    ReferralCompleted: on_referral_completed,
    PurchaseRefunded: on_purchase_refunded,
}


# ---- expiry (a schedule) ------------------------------------------------------------------------

EXPIRY_BATCH = 1_000


async def members_with_points_due(uow: UnitOfWork, *, now: datetime, notice_days: int) -> list[str]:
    """Members who may have lots to expire or to announce. The bounds use the UTC date plus a day,
    which covers every time zone ahead of UTC; the wallet then decides in the chain's zone."""
    soon = now.date() + timedelta(days=1)
    rows = await uow.execute(
        select(lots.c.member_id, func.min(lots.c.expires_on).label("first_expiry"))
        .where(lots.c.remaining > 0, or_(
            lots.c.expires_on < soon,
            and_(lots.c.expires_on <= soon + timedelta(days=notice_days), lots.c.expiry_notified_at.is_(None))))
        .group_by(lots.c.member_id).order_by("first_expiry").limit(EXPIRY_BATCH))
    return [r.member_id for r in rows]


async def expire_member_points(uow: UnitOfWork, *, member_id: str) -> None:
    """Announce lots expiring soon (once per lot) and take away expired ones (an ``expire`` entry).

    Safe on several replicas at once: under the member's row lock, an announced lot is marked
    and an expired lot is emptied, so the second replica finds nothing left to do.
    """
    member = await _locked_member(uow, member_id)
    if member is None:
        return
    wallet = await _wallet_of(uow, member)
    now = uow.now()
    policy = domain.policy_for(member.chain_id)
    soon = wallet.expiring_soon(now, policy.expiring_notice_days)
    for lot in soon:
        uow.publish(PointsExpiringSoon(points=lot.remaining, expires_on=lot.expires_on, lot_id=lot.lot_id),
                    member_id=member.member_id, chain_id=member.chain_id)
    if soon:
        await uow.execute(update(lots).where(lots.c.lot_id.in_([lot.lot_id for lot in soon]))
                          .values(expiry_notified_at=now))
    expired = sum(n for _, n in wallet.expire(now))
    if expired:
        await post(uow, member=member, wallet=wallet, delta=-expired, entry_type="expire", reason="expiry",
                   occurred_at=now, qualifying=False)


async def expire_due_points(db: Database) -> int:
    """One pass of the expiry schedule; each member in its own transaction. Returns members visited."""
    async with db.unit_of_work() as uow:
        due = await members_with_points_due(uow, now=uow.now(),
                                            notice_days=domain.DEFAULT_POLICY.expiring_notice_days)
    for member_id in due:
        async with db.unit_of_work() as uow:
            await expire_member_points(uow, member_id=member_id)
    return len(due)


# ---- commands from the API ----------------------------------------------------------------------


async def redeem(uow: UnitOfWork, *, chain_id: str, member_id: str,
                 req: schemas.RedemptionRequest) -> schemas.PostedEntry:
    """Spend available points, oldest lots first; 409 when they do not cover it or the balance is negative."""
    member, wallet = await _wallet_for_request(uow, chain_id=chain_id, member_id=member_id)
    now = uow.now()
    try:
        wallet.redeem(req.points, now)
    except domain.NegativeBalance as exc:
        raise Conflict(str(exc), balance=exc.balance) from exc
    except domain.InsufficientPoints as exc:
        raise Conflict(str(exc), available=exc.available) from exc
    entry_id = await post(uow, member=member, wallet=wallet, delta=-req.points, entry_type="redeem",
                          reason=req.reason, occurred_at=now, qualifying=False)
    return schemas.PostedEntry(entry_id=entry_id, balance=wallet.balance)


async def adjust(uow: UnitOfWork, *, chain_id: str, member_id: str,
                 req: schemas.AdjustmentRequest) -> schemas.PostedEntry:
    """An operator's correction: a credit is a non-qualifying lot available at once; a debit takes
    the oldest lots and may leave the balance negative."""
    member, wallet = await _wallet_for_request(uow, chain_id=chain_id, member_id=member_id)
    now = uow.now()
    if req.delta > 0:
        policy = domain.policy_for(chain_id)
        wallet.credit(domain.new_lot(str(uuid.uuid4()), req.delta, now, policy, wallet.tz,
                                     qualifying=False, pending=False))
    else:
        wallet.debit(-req.delta)
    entry_id = await post(uow, member=member, wallet=wallet, delta=req.delta, entry_type="adjust",
                          reason=req.reason, occurred_at=now, qualifying=False)
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
        balance=wallet.balance, available=wallet.available(now), pending=wallet.pending(now),
        lots=[schemas.LotView(lot_id=lot.lot_id, remaining=lot.remaining, earned_at=lot.earned_at,
                              expires_on=lot.expires_on, available_at=lot.available_at)
              for lot in wallet.open_lots()],
    )


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
        raise InvalidRequest("The cursor is not one this API returned.", errors=[
            {"location": ["query", "cursor"], "message": "invalid cursor", "type": "value_error"}]) from exc


async def ledger_of(uow: UnitOfWork, *, chain_id: str, member_id: str, cursor: str | None,
                    limit: int) -> schemas.LedgerPage:
    """A page of the member's entries, newest first; the cursor is the last entry's position."""
    before = decode_cursor(cursor) if cursor else None
    await _member_of_chain(uow, chain_id=chain_id, member_id=member_id)
    stmt = select(entries).where(entries.c.member_id == member_id)
    if before is not None:
        stmt = stmt.where(entries.c.seq < before)
    rows = (await uow.execute(stmt.order_by(entries.c.seq.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    return schemas.LedgerPage(
        items=[schemas.LedgerEntry(
            entry_id=r.entry_id, member_id=r.member_id, delta=r.delta, balance=r.balance,
            entry_type=r.entry_type, reason=r.reason, source_event_id=r.source_event_id,
            occurred_at=r.occurred_at, qualifying=r.qualifying, capped=r.capped, created_at=r.created_at,
        ) for r in page],
        next_cursor=encode_cursor(page[-1].seq) if len(rows) > limit else None,
    )

"""Points' event handlers: earning (purchases, activities, referrals), reversal (refunds), members
and programme versions; and ``prepare``, the consumer batch's set-based reads.

Every change of points goes through ``wallets.post`` with the member's account locked (see
:mod:`points.wallets`); the tables are reached through the transaction's store (:func:`store_of`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.consumer import handlers
from shared.db import Unit
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    MemberEnrolled,
    PolicyChanged,
    PurchaseRecorded,
    PurchaseRefunded,
    ReferralCompleted,
)
from shared.policy import Policy

from . import domain
from .store import Account, Member, PurchaseEarning, Refund, store_of
from .wallets import post


class UnknownMember(ValueError):
    """An event for a member this service never saw enrol: a bad event (dead-lettered)."""


class UnknownPurchase(ValueError):
    """A refund of a purchase this service never saw: a bad event (dead-lettered)."""


@dataclass
class PointsBatch:
    """What :func:`prepare` loaded for a consumer batch (one transaction), for its handlers."""

    #: the members the batch changes, locked, with their wallets; the next event of the same member
    #: in the batch (the same transaction, so the lock is still held) reuses them
    accounts: dict[str, Account] = field(default_factory=dict)
    #: whether each of the batch's purchases has earned already (set once it earns in this batch)
    purchase_earned: dict[str, bool] = field(default_factory=dict)


def _member_of(event: CloudEvent[Any]) -> str | None:
    """The member whose points an event changes (None: it changes no one's)."""
    d = event.data
    if isinstance(d, ReferralCompleted):
        return d.referrer_id
    if isinstance(d, PurchaseRecorded):
        return d.member_id
    if isinstance(d, ActivityRecorded | PurchaseRefunded):
        return d.member_id or event.subject
    return None


async def prepare(events: list[CloudEvent[Any]], uow: Unit) -> None:
    """A consumer batch's reads, set-based: lock every member the batch changes (one query, in
    member order), load their wallets (one query) and which of its purchases already earned (one
    query). The handlers find them in the batch; a member this batch enrols is loaded on first use."""
    batch = uow.state(PointsBatch)
    store = store_of(uow)
    ids = sorted({m for e in events if (m := _member_of(e)) and m not in batch.accounts})
    if ids:
        for account in await store.locked_accounts(member_ids=ids):
            batch.accounts[account.member.member_id] = account
    purchases = [e.data.purchase_id for e in events if isinstance(e.data, PurchaseRecorded)]
    if purchases:
        earned = await store.earned_purchases(purchase_ids=purchases)
        batch.purchase_earned.update({pid: pid in earned for pid in purchases})


async def _account_for_event(uow: Unit, event: CloudEvent[Any], member_id: str) -> Account:
    """Lock the member an event is about; an unknown member, or one of another chain, is a bad event.

    The locked member and wallet are kept in the batch: the next event of the same member in the
    batch (the same transaction, so the lock is still held) reuses them."""
    batch = uow.state(PointsBatch)
    account = batch.accounts.get(member_id)
    if account is None:
        account = await store_of(uow).locked_account(member_id=member_id)
        if account is None or account.member.chain_id != event.chainid:
            raise UnknownMember(f"{event.type} {event.id} names member {member_id}, unknown in chain {event.chainid}")
        batch.accounts[member_id] = account
    if account.member.chain_id != event.chainid:
        raise UnknownMember(f"{event.type} {event.id} names member {member_id}, unknown in chain {event.chainid}")
    return account


async def _first_earning(uow: Unit, earning: PurchaseEarning) -> bool:
    """Record what a purchase earned; False when it was recorded before (a second delivery of the
    purchase under another event id changes nothing). Known from the batch's :func:`prepare`, the
    row is queued; otherwise the primary key decides."""
    batch = uow.state(PointsBatch)
    store = store_of(uow)
    if earning.purchase_id in batch.purchase_earned:
        if batch.purchase_earned[earning.purchase_id]:
            return False
        batch.purchase_earned[earning.purchase_id] = True
        await store.add_purchase_earning(earning=earning)
        return True
    return await store.add_purchase_earning_if_new(earning=earning)


def _too_late_to_earn(uow: Unit, wallet: domain.Wallet, policy: Policy, earned_at: datetime) -> bool:
    """Decided when the event is processed: a credit whose lot would have expired by now earns none."""
    return domain.expired_on_arrival(earned_at, uow.now(), wallet.tz, policy.expiry_months)


async def _record_not_awarded(
    uow: Unit,
    *,
    member: Member,
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


async def on_member_enrolled(event: CloudEvent[MemberEnrolled], uow: Unit) -> None:
    d = event.data
    known = await store_of(uow).add_member(member_id=d.member_id, chain_id=event.chainid, enrolled_at=d.enrolled_at)
    if known != event.chainid:  # an enrolment naming another chain's member: refused (dead-lettered)
        raise UnknownMember(f"{event.type} {event.id} names member {d.member_id}, unknown in chain {event.chainid}")


async def on_purchase_recorded(event: CloudEvent[PurchaseRecorded], uow: Unit) -> None:
    d = event.data
    account = await _account_for_event(uow, event, d.member_id)
    member, wallet = account.member, account.wallet
    policy = await store_of(uow).policy(chain_id=event.chainid)
    points = domain.purchase_points(d.amount_fen, d.occurred_at, member.enrolled_at, policy.earning)
    late = points > 0 and _too_late_to_earn(uow, wallet, policy, d.occurred_at)
    lot_id = str(uuid.uuid4()) if points > 0 and not late else None
    # what the purchase earned is kept (even 0) so its refunds can be reversed in proportion;
    # the primary key makes a second delivery of the purchase a no-op
    if not await _first_earning(
        uow,
        PurchaseEarning(
            purchase_id=d.purchase_id,
            member_id=d.member_id,
            amount_fen=d.amount_fen,
            earned=0 if late else points,
            lot_id=lot_id,
        ),
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


async def on_activity_recorded(event: CloudEvent[ActivityRecorded], uow: Unit) -> None:
    d = event.data
    store = store_of(uow)
    policy = await store.policy(chain_id=event.chainid)
    points = domain.behaviour_points(d.kind, policy.earning)
    account = await _account_for_event(uow, event, d.member_id or event.subject)
    member, wallet = account.member, account.wallet
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
    so_far = await store.behaviour_awarded(member_id=member.member_id, month=month)
    awarded, capped = domain.capped_award(points, so_far, policy.earning.behaviour_monthly_cap)
    if awarded:
        await store.add_behaviour_award(member_id=member.member_id, month=month, points=awarded)
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


async def on_referral_completed(event: CloudEvent[ReferralCompleted], uow: Unit) -> None:
    d = event.data
    policy = await store_of(uow).policy(chain_id=event.chainid)
    points = policy.referral.referrer_points
    account = await _account_for_event(uow, event, d.referrer_id)
    member, wallet = account.member, account.wallet
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


async def on_purchase_refunded(event: CloudEvent[PurchaseRefunded], uow: Unit) -> None:
    d = event.data
    store = store_of(uow)
    account = await _account_for_event(uow, event, d.member_id or event.subject)
    member, wallet = account.member, account.wallet
    purchase = await store.purchase_earning(purchase_id=d.purchase_id)
    if purchase is None or purchase.member_id != member.member_id:
        raise UnknownPurchase(f"refund {d.refund_id} of purchase {d.purchase_id} unknown for member {member.member_id}")
    points = domain.reversal_points(
        earned=purchase.earned,
        amount_fen=purchase.amount_fen,
        refunded_before_fen=purchase.refunded_fen,
        refund_fen=d.amount_fen,
        reversed_before=purchase.reversed,
    )
    refund = Refund(
        purchase_id=d.purchase_id,
        refund_id=d.refund_id,
        amount_fen=d.amount_fen,
        reversed=points,
        occurred_at=d.occurred_at,
    )
    if not await store.add_refund(refund=refund):
        return  # this refund was reversed before
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


async def on_policy_changed(event: CloudEvent[PolicyChanged], uow: Unit) -> None:
    """Keep tiering's new programme version; events processed from now on earn under it."""
    await store_of(uow).keep_policy(change=event)


HANDLERS = handlers(
    on_policy_changed,
    on_member_enrolled,
    on_purchase_recorded,
    on_activity_recorded,
    on_referral_completed,
    on_purchase_refunded,
)

"""Tiering's event handlers: qualification and upgrades.

Every consumed fact is stored once (``qualifying_facts.source_event_id`` is unique, on top
of the inbox) at the time it happened; the member's tier is then re-evaluated against the
trailing window ending now. Upgrades happen here, at once; downgrades never do (only a
review may move a member down), so a refund or an old fact leaving the window changes
the progress shown, not the tier.

The handlers reach the tables through the transaction's :class:`~tiering.store.TieringStore`
(:func:`~tiering.store.store_of`), and what a consumer batch's :func:`prepare` loaded through its
:class:`TieringBatch` (:func:`batch_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.consumer import check_member_chain, foreign_member, handlers
from shared.db import Unit
from shared.events import (
    CloudEvent,
    MemberEnrolled,
    MemberErased,
    PointsChanged,
    PurchaseRecorded,
    PurchaseRefunded,
    TierChanged,
)
from shared.policy import Policy

from . import domain
from .moves import publish_progress
from .store import Fact, Member, store_of


@dataclass
class TieringBatch:
    """What a consumer batch's :func:`prepare` loaded, and what its handlers leave for its end."""

    #: the locked record of every member the batch has touched, by member id
    members: dict[str, Member] = field(default_factory=dict)
    #: for each fact of the batch (by source event id): stored already (before, or earlier in the batch)
    facts_stored: dict[str, bool] = field(default_factory=dict)
    #: the members to qualify when the unit of work ends, with their chain
    to_qualify: dict[str, str] = field(default_factory=dict)


def batch_of(uow: Unit) -> TieringBatch:
    return uow.state(TieringBatch)


def _fact_member(event: CloudEvent[Any]) -> str | None:
    """The member a consumed event is a qualifying fact of (None: not a fact)."""
    d = event.data
    if isinstance(d, PurchaseRecorded):
        return d.member_id
    if isinstance(d, PurchaseRefunded):
        return d.member_id or event.subject
    if isinstance(d, PointsChanged) and d.qualifying and d.delta != 0:
        return event.subject
    return None


async def prepare(events: list[CloudEvent[Any]], uow: Unit) -> None:
    """A consumer batch's reads, set-based: lock the rows of every member the batch has facts of
    (one query, in member order) and learn which of its facts were stored before (one query)."""
    facts = [(e, m) for e in events if (m := _fact_member(e))]
    if not facts:
        return
    batch, store = batch_of(uow), store_of(uow)
    ids = sorted({m for _, m in facts if m not in batch.members})
    if ids:
        for member in await store.lock_members(member_ids=ids):
            batch.members[member.member_id] = member
    stored = await store.stored_facts(event_ids=[e.id for e, _ in facts])
    batch.facts_stored.update({e.id: e.id in stored for e, _ in facts})


async def _record_fact(uow: Unit, fact: Fact) -> bool:
    """Store the fact once per source event; False when it was stored before. Known from the
    batch's :func:`prepare`, the row is queued; otherwise the unique key decides."""
    batch, store = batch_of(uow), store_of(uow)
    stored = batch.facts_stored.get(fact.source_event_id)
    if stored is None:
        return await store.add_fact_once(fact=fact)
    if stored:
        return False
    batch.facts_stored[fact.source_event_id] = True
    await store.add_new_fact(fact=fact)
    return True


# ---- qualification ------------------------------------------------------------------------------


async def _upgrade(uow: Unit, *, member: Member, to_tier: str, policy: Policy, chain_id: str) -> Member:
    """Move the member up at once (several tiers in one step if they qualify for it)."""
    store = store_of(uow)
    now = uow.now()
    review = domain.review_at(now, policy.review_months, await store.timezone(chain_id=chain_id))
    changed = await store.upgrade(
        member=member, to_tier=to_tier, policy_version=policy.version, effective_at=now, review_at=review
    )
    uow.publish(
        TierChanged(
            from_tier=member.tier,
            to_tier=to_tier,
            direction="up",
            reason="qualified",
            policy_version=policy.version,
            effective_at=now,
            review_at=review,
            to_tier_name=domain.tier_name(policy, to_tier),
        ),
        member_id=member.member_id,
        chain_id=chain_id,
        time=now,
    )
    return changed


def _qualify_at_commit(uow: Unit, *, member: Member, chain_id: str) -> None:
    """Re-evaluate the (locked) member when the unit of work ends: once per batch, however many of
    its facts the batch holds."""
    batch = batch_of(uow)
    batch.members[member.member_id] = member
    batch.to_qualify[member.member_id] = chain_id
    uow.at_commit("qualify", _qualify_all)


async def _qualify_all(uow: Unit) -> None:
    """Upgrade those whose window now reaches a higher tier; publish everyone's progress. The
    windows of a chain's members come from one aggregate query.

    An override that still holds changes nothing here: it is a floor for reviews, and a member
    who qualifies above it is upgraded like anyone else."""
    batch, store = batch_of(uow), store_of(uow)
    todo, batch.to_qualify = batch.to_qualify, {}
    by_chain: dict[str, list[str]] = {}
    for member_id, chain_id in todo.items():
        by_chain.setdefault(chain_id, []).append(member_id)
    now = uow.now()
    for chain_id, member_ids in by_chain.items():
        policy = await store.policy(chain_id=chain_id)
        totals = await store.trailing_totals(
            member_ids=member_ids, window_days=policy.qualification_window_days, as_of=now
        )
        for member_id in member_ids:
            member = batch.members[member_id]
            spend, points = totals.get(member_id, (0, 0))
            qualified = domain.qualified_tier(policy, spend, points)
            if domain.is_upgrade(policy, member.tier, qualified):
                member = batch.members[member_id] = await _upgrade(
                    uow, member=member, to_tier=qualified, policy=policy, chain_id=chain_id
                )
            publish_progress(
                uow,
                member_id=member_id,
                chain_id=chain_id,
                policy=policy,
                tier=member.tier,
                spend_fen=spend,
                points=points,
                review_at=member.review_at,
            )


async def _lock_or_create(
    uow: Unit, event: CloudEvent[Any], *, member_id: str, enrolled_at: datetime | None = None
) -> Member:
    """The member's locked record, created when unknown (a fact may overtake the enrolment); a member
    known in another chain than the event names is a forged event, refused before anything changes."""
    store = store_of(uow)
    policy = await store.policy(chain_id=event.chainid)
    member = await store.lock_or_create_member(
        member_id=member_id, chain_id=event.chainid, policy=policy, now=uow.now(), enrolled_at=enrolled_at
    )
    if member is None:
        raise foreign_member(event, member_id)
    return member


async def _count_fact(
    uow: Unit,
    event: CloudEvent[Any],
    *,
    member_id: str,
    occurred_at: datetime,
    spend_fen: int = 0,
    points: int = 0,
) -> None:
    member = batch_of(uow).members.get(member_id)
    if member is None:  # not seen before (a fact ahead of the enrolment), or outside a batch
        member = await _lock_or_create(uow, event, member_id=member_id)
    check_member_chain(event, member_id, member.chain_id)
    fact = Fact(
        source_event_id=event.id, member_id=member_id, occurred_at=occurred_at, spend_fen=spend_fen, points=points
    )
    if not await _record_fact(uow, fact):
        return  # counted before: nothing changes
    _qualify_at_commit(uow, member=member, chain_id=event.chainid)


# ---- event handlers -----------------------------------------------------------------------------


async def on_member_enrolled(event: CloudEvent[MemberEnrolled], uow: Unit) -> None:
    d = event.data
    member = await _lock_or_create(uow, event, member_id=d.member_id, enrolled_at=d.enrolled_at)
    _qualify_at_commit(uow, member=member, chain_id=event.chainid)


async def on_purchase_recorded(event: CloudEvent[PurchaseRecorded], uow: Unit) -> None:
    d = event.data
    await _count_fact(uow, event, member_id=d.member_id, occurred_at=d.occurred_at, spend_fen=d.amount_fen)


async def on_purchase_refunded(event: CloudEvent[PurchaseRefunded], uow: Unit) -> None:
    """A refund takes spend away at the refund's time; it never downgrades (only a review does)."""
    d = event.data
    await _count_fact(
        uow, event, member_id=d.member_id or event.subject, occurred_at=d.occurred_at, spend_fen=-d.amount_fen
    )


async def on_points_changed(event: CloudEvent[PointsChanged], uow: Unit) -> None:
    """Only qualifying points count (earned from spend and behaviour, and their reversals)."""
    d = event.data
    if not d.qualifying or d.delta == 0:
        return
    await _count_fact(uow, event, member_id=event.subject, occurred_at=d.occurred_at or event.time, points=d.delta)


async def on_member_erased(event: CloudEvent[MemberErased], uow: Unit) -> None:
    """Tiers and facts are pseudonymous and stay; what operators wrote about the member goes. Another
    chain's member is refused (dead-lettered): a forged erasure changes nothing."""
    store = store_of(uow)
    for member in await store.lock_members(member_ids=[event.data.member_id]):
        check_member_chain(event, member.member_id, member.chain_id)
    await store.forget_notes(member_id=event.data.member_id)


HANDLERS = handlers(on_member_enrolled, on_purchase_recorded, on_purchase_refunded, on_points_changed, on_member_erased)

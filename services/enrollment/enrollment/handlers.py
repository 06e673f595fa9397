"""Enrollment's event handlers: the member status view, a projection of points, tiering and
benefits events (and the chain's programme versions, which the referral job reads).

The domain builds each event's change of the view (:mod:`.domain`); the store writes it. A rebuild
(``membershipctl rebuild status-view``) has the owners re-publish their state as PointsSnapshot,
TierSnapshot and BenefitsSnapshot, on their topics in order with the member's other events: each
replaces its part of the view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.consumer import check_member_chain, handlers
from shared.db import Unit
from shared.events import (
    BenefitGranted,
    BenefitRedeemed,
    BenefitRevoked,
    BenefitsSnapshot,
    CloudEvent,
    PointsChanged,
    PointsSnapshot,
    TierChanged,
    TierProgressChanged,
    TierSnapshot,
)

from . import domain
from .domain import Doc, SetSnapshot, SnapshotColumn
from .store import store_of
from .tables import policies


@dataclass
class EnrollmentBatch:
    """What this transaction's handlers gathered for the end of the unit of work: each member's
    newest snapshot documents (points, tier, progress); and what :func:`prepare` read: the chains."""

    snapshots: dict[str, dict[SnapshotColumn, Doc]] = field(default_factory=dict)
    #: the chain each member the batch's view events name is enrolled in (None: not enrolled here)
    chains: dict[str, str | None] = field(default_factory=dict)


#: the events the view is built from: each names its member as the subject
VIEW_EVENTS = (
    PointsChanged,
    TierChanged,
    TierProgressChanged,
    BenefitGranted,
    BenefitRedeemed,
    BenefitRevoked,
    PointsSnapshot,
    TierSnapshot,
    BenefitsSnapshot,
)


async def prepare(events: list[CloudEvent[Any]], uow: Unit) -> None:
    """A consumer batch's one read: the chain of every member its view events name."""
    batch = uow.state(EnrollmentBatch)
    ids = sorted({e.subject for e in events if isinstance(e.data, VIEW_EVENTS)} - batch.chains.keys())
    if ids:
        known = await store_of(uow).chains_of(member_ids=ids)
        batch.chains.update({m: known.get(m) for m in ids})


async def _member_of(uow: Unit, event: CloudEvent[Any]) -> str:
    """The member the event changes the view of. One enrolled in another chain than the event names
    makes it a forged event: refused (dead-lettered), nothing changes."""
    batch, member_id = uow.state(EnrollmentBatch), event.subject
    if member_id not in batch.chains:  # outside a prepared batch
        batch.chains[member_id] = (await store_of(uow).chains_of(member_ids=[member_id])).get(member_id)
    check_member_chain(event, member_id, batch.chains[member_id])
    return member_id


def _keep_snapshot(uow: Unit, member_id: str, change: SetSnapshot) -> None:
    """Points, tier and progress are snapshots: the newest of a batch replaces the rest (one member's
    events arrive in order), and every member's newest are written in one upsert per set of columns
    when the unit of work ends."""
    uow.state(EnrollmentBatch).snapshots.setdefault(member_id, {})[change.column] = change.doc
    uow.at_commit("status snapshots", _write_snapshots)


async def _write_snapshots(uow: Unit) -> None:
    batch = uow.state(EnrollmentBatch)
    snapshots, batch.snapshots = batch.snapshots, {}
    await store_of(uow).write_snapshots(snapshots=snapshots)


async def on_points_changed(event: CloudEvent[PointsChanged], uow: Unit) -> None:
    _keep_snapshot(uow, await _member_of(uow, event), domain.points_changed(event.data))


async def on_tier_changed(event: CloudEvent[TierChanged], uow: Unit) -> None:
    _keep_snapshot(uow, await _member_of(uow, event), domain.tier_changed(event.data))


async def on_tier_progress_changed(event: CloudEvent[TierProgressChanged], uow: Unit) -> None:
    _keep_snapshot(uow, await _member_of(uow, event), domain.progress_changed(event.data))


async def on_points_snapshot(event: CloudEvent[PointsSnapshot], uow: Unit) -> None:
    """A rebuild: the points as points holds them now replace the view's (as a PointsChanged would)."""
    _keep_snapshot(uow, await _member_of(uow, event), domain.points_changed(event.data))


async def on_tier_snapshot(event: CloudEvent[TierSnapshot], uow: Unit) -> None:
    """A rebuild: the tier and progress as tiering holds them now replace the view's."""
    member_id = await _member_of(uow, event)
    for change in domain.tier_snapshot(event.data):
        _keep_snapshot(uow, member_id, change)


async def on_benefits_snapshot(event: CloudEvent[BenefitsSnapshot], uow: Unit) -> None:
    """A rebuild: the member's entitlements as benefits holds them now replace every entry of the view.
    Written at once, like grants and revocations, so it keeps its place among them in the batch."""
    change = domain.benefits_snapshot(event.data)
    await store_of(uow).set_benefits(member_id=await _member_of(uow, event), benefits=change.benefits)


async def on_benefit_granted(event: CloudEvent[BenefitGranted], uow: Unit) -> None:
    change = domain.benefit_changed(event.data)
    await store_of(uow).keep_benefit(member_id=await _member_of(uow, event), benefit=change.benefit)


async def on_benefit_redeemed(event: CloudEvent[BenefitRedeemed], uow: Unit) -> None:
    change = domain.benefit_changed(event.data)  # same effect: the entitlement's new remaining_uses
    await store_of(uow).keep_benefit(member_id=await _member_of(uow, event), benefit=change.benefit)


async def on_benefit_revoked(event: CloudEvent[BenefitRevoked], uow: Unit) -> None:
    change = domain.benefit_revoked(event.data)
    await store_of(uow).drop_benefit(member_id=await _member_of(uow, event), benefit_id=change.benefit_id)


HANDLERS = handlers(
    on_points_changed,
    on_tier_changed,
    on_tier_progress_changed,
    on_benefit_granted,
    on_benefit_redeemed,
    on_benefit_revoked,
    on_points_snapshot,
    on_tier_snapshot,
    on_benefits_snapshot,
    policies.on_policy_changed,
)

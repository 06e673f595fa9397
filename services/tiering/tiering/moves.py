"""Recording tier decisions: the members' new tiers, their history rows and the events about them.

:func:`publish_progress` is the status view's snapshot of a member's counters (qualification
publishes it for every member it evaluates; :func:`tier_snapshot` adds the tier, for a rebuild);
:func:`record_moves` records the tier moves of many members at once (overrides, reviews,
recalculations).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, case, update

from shared.db import Unit, UnitOfWork
from shared.events import TierChanged, TierProgressChanged, TierSnapshot
from shared.policy import Policy

from . import domain
from .store import Totals
from .tables import members, tier_history


def progress_of(
    *, policy: Policy, tier: str, spend_fen: int, points: int, review_at: datetime | None
) -> TierProgressChanged:
    """The member's counters against the next tier, as the status view shows them."""
    p = domain.progress(policy, tier, spend_fen, points)
    return TierProgressChanged(
        tier=tier,
        tier_name=domain.tier_name(policy, tier),
        next_tier=p.next_tier,
        spend_fen=p.spend_fen,
        spend_needed_fen=p.spend_needed_fen,
        points=p.points,
        points_needed=p.points_needed,
        review_at=review_at,
        policy_version=policy.version,
    )


def publish_progress(
    uow: Unit,
    *,
    member_id: str,
    chain_id: str,
    policy: Policy,
    tier: str,
    spend_fen: int,
    points: int,
    review_at: datetime | None,
) -> None:
    """The member's counters against the next tier, for the status view."""
    uow.publish(
        progress_of(policy=policy, tier=tier, spend_fen=spend_fen, points=points, review_at=review_at),
        member_id=member_id,
        chain_id=chain_id,
        replaces=("progress", member_id),
    )  # one snapshot per batch


def tier_snapshot(
    *, policy: Policy, tier: str, since: datetime, spend_fen: int, points: int, review_at: datetime | None
) -> TierSnapshot:
    """A rebuild's snapshot of the member: the tier held and the counters :func:`publish_progress` publishes."""
    p = progress_of(policy=policy, tier=tier, spend_fen=spend_fen, points=points, review_at=review_at)
    return TierSnapshot(
        tier=tier,
        tier_name=p.tier_name,
        since=since,
        review_at=review_at,
        next_tier=p.next_tier,
        spend_fen=p.spend_fen,
        spend_needed_fen=p.spend_needed_fen,
        points=p.points,
        points_needed=p.points_needed,
        policy_version=p.policy_version,
    )


@dataclass(frozen=True)
class TierMove:
    """One member's recorded tier decision: a history row and a TierChanged event."""

    member_id: str
    from_tier: str
    to_tier: str
    reason: domain.ChangeReason
    review_at: datetime | None
    note: str | None = None


async def record_moves(
    uow: UnitOfWork,
    moves: list[TierMove],
    *,
    policy: Policy,
    chain_id: str,
    effective_at: datetime,
    totals: dict[str, Totals],
) -> None:
    """Set the members' tiers and review dates, append history and publish TierChanged (and the new
    progress) for each move, in the caller's transaction. The caller holds the members' row locks.
    ``since`` only changes with the tier: a review that keeps the tier keeps its since."""
    if not moves:
        return
    await uow.execute(
        update(members)
        .where(members.c.member_id == bindparam("m_id"))
        .values(
            tier=bindparam("m_tier"),
            review_at=bindparam("m_review_at"),
            policy_version=policy.version,
            updated_at=effective_at,
            since=case((members.c.tier == bindparam("m_tier"), members.c.since), else_=effective_at),
        ),
        [{"m_id": m.member_id, "m_tier": m.to_tier, "m_review_at": m.review_at} for m in moves],
    )
    await uow.execute(
        tier_history.insert(),
        [
            {
                "member_id": m.member_id,
                "from_tier": m.from_tier,
                "to_tier": m.to_tier,
                "direction": domain.direction(policy, m.from_tier, m.to_tier),
                "reason": m.reason,
                "effective_at": effective_at,
                "policy_version": policy.version,
                "review_at": m.review_at,
                "note": m.note,
            }
            for m in moves
        ],
    )
    for m in moves:
        uow.publish(
            TierChanged(
                from_tier=m.from_tier,
                to_tier=m.to_tier,
                direction=domain.direction(policy, m.from_tier, m.to_tier),
                reason=m.reason,
                policy_version=policy.version,
                effective_at=effective_at,
                review_at=m.review_at,
                to_tier_name=domain.tier_name(policy, m.to_tier),
            ),
            member_id=m.member_id,
            chain_id=chain_id,
            time=effective_at,
        )
        spend, points = totals.get(m.member_id, (0, 0))
        publish_progress(
            uow,
            member_id=m.member_id,
            chain_id=chain_id,
            policy=policy,
            tier=m.to_tier,
            spend_fen=spend,
            points=points,
            review_at=m.review_at,
        )

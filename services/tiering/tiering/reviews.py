"""Periodic reviews (SPEC §4 Downgrades) and the end of overrides.

A member is due when ``review_at <= as_of`` or their override's end has passed. Due members
are claimed in batches with ``FOR UPDATE SKIP LOCKED``: replicas running the schedule at the
same time take disjoint batches, and a reviewed member leaves the due set in the same
transaction (``review_at`` moves a cycle on, the override is cleared), so each due date is
reviewed exactly once. Facts are evaluated over the trailing window ending at ``as_of``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update

from shared.db import Database, UnitOfWork
from shared.platform import chain_timezone
from shared.policy import Policy

from . import domain
from .moves import TierMove, record_moves
from .policies import POLICIES
from .store import trailing_totals
from .tables import members

REVIEW_BATCH = 500


@dataclass
class ReviewTally:
    reviewed: int = 0
    moved_up: int = 0
    moved_down: int = 0
    unchanged: int = 0

    def add(self, other: ReviewTally) -> None:
        self.reviewed += other.reviewed
        self.moved_up += other.moved_up
        self.moved_down += other.moved_down
        self.unchanged += other.unchanged

    def count(self, direction: str) -> None:
        self.reviewed += 1
        if direction == "up":
            self.moved_up += 1
        elif direction == "down":
            self.moved_down += 1
        else:
            self.unchanged += 1


async def _claim_due(uow: UnitOfWork, *, as_of: datetime, chain_ids: Sequence[str], limit: int) -> list[Any]:
    # SKIP LOCKED: a member another replica (or a handler) is working on is left for later,
    # never reviewed twice for one due date
    stmt = (
        select(members)
        .where(
            or_(members.c.review_at <= as_of, members.c.override_until <= as_of),
            members.c.chain_id.in_(chain_ids),
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await uow.execute(stmt)).all())


async def _review_chain(
    uow: UnitOfWork, rows: list[Any], *, chain_id: str, policy: Policy, as_of: datetime
) -> ReviewTally:
    tz = await chain_timezone(uow.session, chain_id)
    totals = await trailing_totals(
        uow, member_ids=[r.member_id for r in rows], window_days=policy.qualification_window_days, as_of=as_of
    )
    tally = ReviewTally()
    moves: list[TierMove] = []
    ended: list[str] = []
    for r in rows:
        spend, points = totals.get(r.member_id, (0, 0))
        outcome = domain.review_member(
            policy,
            tier=r.tier,
            review_at=r.review_at,
            override_tier=r.override_tier,
            override_until=r.override_until,
            qualified=domain.qualified_tier(policy, spend, points),
            as_of=as_of,
            tz=tz,
        )
        if outcome is None:
            continue
        tally.count(domain.direction(policy, r.tier, outcome.to_tier))
        if outcome.override_ended:
            ended.append(r.member_id)
        if outcome.recorded:
            moves.append(
                TierMove(
                    r.member_id,
                    r.tier,
                    outcome.to_tier,
                    "review",
                    outcome.review_at,
                    note="override ended" if outcome.override_ended else None,
                )
            )
    await record_moves(uow, moves, policy=policy, chain_id=chain_id, effective_at=as_of, totals=totals)
    if ended:
        await uow.execute(
            update(members)
            .where(members.c.member_id.in_(ended))
            .values(override_tier=None, override_reason=None, override_until=None)
        )
    return tally


async def review_batch(
    uow: UnitOfWork, *, as_of: datetime, chain_ids: Sequence[str], limit: int = REVIEW_BATCH
) -> tuple[int, ReviewTally]:
    """Review one batch of due members of the chains; returns (claimed, tally)."""
    rows = await _claim_due(uow, as_of=as_of, chain_ids=chain_ids, limit=limit)
    by_chain: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_chain[r.chain_id].append(r)
    tally = ReviewTally()
    for chain, chain_rows in by_chain.items():
        policy = await POLICIES.get(uow, chain)
        tally.add(await _review_chain(uow, chain_rows, chain_id=chain, policy=policy, as_of=as_of))
    return len(rows), tally


async def run_due_reviews(
    db: Database, *, as_of: datetime, chain_ids: Sequence[str], correlation_id: str | None = None
) -> ReviewTally:
    """Review every member of the chains due as of ``as_of``, one batch per transaction, until
    none is left. Returns what happened."""
    tally = ReviewTally()
    if not chain_ids:
        return tally
    while True:
        async with db.unit_of_work(correlation_id=correlation_id) as uow:
            claimed, batch = await review_batch(uow, as_of=as_of, chain_ids=chain_ids)
        tally.add(batch)
        if claimed < REVIEW_BATCH:  # a reviewed member leaves the due set, so a short batch was the last
            return tally

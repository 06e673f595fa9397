"""What tiering's API changes: a member's tier by override, the chain's policy (a new version), and
the start of a recalculation (the worker does the work: :mod:`tiering.recalculation`); and a
rebuild's snapshots of the members' tiers (:func:`publish_snapshots`)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from shared.db import UnitOfWork
from shared.events import PolicyChanged
from shared.platform import chain_timezone
from shared.policy import Policy
from shared.problems import Conflict, InvalidRequest, NotFound
from shared.snapshots import SnapshotPage, chain_members, member_page

from . import domain, schemas
from .moves import TierMove, record_moves, tier_snapshot
from .policies import POLICIES, current_policy
from .queries import member_tier, window_totals
from .store import store_of
from .tables import members, policies, recalc_jobs

# ---- overrides ----------------------------------------------------------------------------------


def _check_override(policy: Policy, req: schemas.OverrideRequest, now: datetime) -> None:
    if req.to_tier not in {t.code for t in policy.tiers}:
        raise InvalidRequest(
            f"{req.to_tier!r} is not a tier of policy version {policy.version}.",
            errors=[{"location": ["body", "to_tier"], "message": "unknown tier", "type": "value_error"}],
        )
    if req.until is not None and req.until <= now:
        raise InvalidRequest(
            "until must be in the future.",
            errors=[{"location": ["body", "until"], "message": "must be in the future", "type": "value_error"}],
        )


async def override_tier(
    uow: UnitOfWork, *, chain_id: str, member_id: str, req: schemas.OverrideRequest
) -> schemas.MemberTier:
    """Set the member's tier at once and hold it as a floor until ``until`` (or the next review).

    The override is a tier change like any other (history row with the operator's reason,
    TierChanged reason "override", a review cycle starting now). While it holds, qualifying
    higher still upgrades, and reviews never move the member below it; when it ends, the review
    run hands the member back to normal evaluation (:func:`domain.review_member`).
    """
    policy = await POLICIES.get(uow, chain_id)
    now = uow.now()
    _check_override(policy, req, now)
    member = (
        await uow.execute(
            select(members).where(members.c.member_id == member_id, members.c.chain_id == chain_id).with_for_update()
        )
    ).first()
    if member is None:
        raise NotFound("No such member.")
    review = domain.review_at(now, policy.review_months, await chain_timezone(uow.session, chain_id))
    spend, points = await window_totals(uow, member_id=member_id, policy=policy, as_of=now)
    await record_moves(
        uow,
        [TierMove(member_id, member.tier, req.to_tier, "override", review, note=req.reason)],
        policy=policy,
        chain_id=chain_id,
        effective_at=now,
        totals={member_id: (spend, points)},
    )
    await uow.execute(
        update(members)
        .where(members.c.member_id == member_id)
        .values(
            override_tier=req.to_tier, override_reason=req.reason, override_until=domain.override_end(req.until, review)
        )
    )
    return await member_tier(uow, chain_id=chain_id, member_id=member_id)


# ---- the policy ---------------------------------------------------------------------------------


async def _tiers_held(uow: UnitOfWork, chain_id: str) -> set[str]:
    rows = await uow.execute(select(members.c.tier).where(members.c.chain_id == chain_id).distinct())
    return {r.tier for r in rows}


async def change_policy(uow: UnitOfWork, *, chain_id: str, policy: Policy) -> Policy:
    """Store ``policy`` as the chain's next version (the version it names is ignored) and publish
    it as PolicyChanged. Nobody moves until a review or a recalculation."""
    current = await current_policy(uow, chain_id=chain_id)
    orphaned = await _tiers_held(uow, chain_id) - {t.code for t in policy.tiers}
    if orphaned:
        raise Conflict(f"Members still hold tiers the new policy drops: {sorted(orphaned)}.", tiers=sorted(orphaned))
    stored = policy.model_copy(update={"version": current.version + 1})
    now = uow.now()
    document = stored.model_dump(mode="json")
    try:
        async with uow.session.begin_nested():
            await uow.execute(
                policies.insert().values(chain_id=chain_id, version=stored.version, document=document, created_at=now)
            )
    except IntegrityError as exc:
        # two PUTs raced for the same version number: the other one won
        raise Conflict("The policy was changed concurrently; read it again and retry.") from exc
    # same transaction as the new version: consumers get it exactly when it exists
    uow.publish(
        PolicyChanged(version=stored.version, policy=document, changed_at=now),
        member_id=f"chain:{chain_id}",
        chain_id=chain_id,
    )
    return stored


async def start_recalculation(uow: UnitOfWork, *, chain_id: str) -> schemas.RecalculationStarted:
    """Record a job for the chain's current policy version; the worker does the work.

    A job still running under an older version is superseded (marked failed): two jobs of
    different versions must not move the same members back and forth.
    """
    policy = await POLICIES.get(uow, chain_id)
    now = uow.now()
    job_id = str(uuid.uuid4())
    await uow.execute(
        update(recalc_jobs)
        .where(recalc_jobs.c.chain_id == chain_id, recalc_jobs.c.status == "running")
        .values(status="failed", finished_at=now, error=f"superseded by job {job_id} (policy version {policy.version})")
    )
    total = await uow.session.scalar(select(func.count()).select_from(members).where(members.c.chain_id == chain_id))
    await uow.execute(
        recalc_jobs.insert().values(
            job_id=job_id,
            chain_id=chain_id,
            policy_version=policy.version,
            status="running",
            total=total or 0,
            started_at=now,
        )
    )
    return schemas.RecalculationStarted(
        job_id=job_id, status="running", policy_version=policy.version, total=total or 0
    )


# ---- a rebuild of the status view ---------------------------------------------------------------


async def publish_snapshots(uow: UnitOfWork, *, chain_id: str, after: str | None, limit: int) -> SnapshotPage:
    """A TierSnapshot of each of a page of the chain's members (ids after ``after``, in id order): the
    tier held and the progress qualification publishes, over the window ending now. The members are
    locked as for any tier change, so a change in flight is published before the snapshot, a later one
    after it."""
    page = await member_page(uow, members, chain_id=chain_id, after=after, limit=limit)
    total = await chain_members(uow, members, chain_id=chain_id) if after is None else None
    store = store_of(uow)
    locked = await store.lock_members(member_ids=page.member_ids)
    policy = await store.policy(chain_id=chain_id)
    totals = await store.trailing_totals(
        member_ids=[m.member_id for m in locked], window_days=policy.qualification_window_days, as_of=uow.now()
    )
    for m in locked:
        spend, points = totals.get(m.member_id, (0, 0))
        uow.publish(
            tier_snapshot(
                policy=policy, tier=m.tier, since=m.since, spend_fen=spend, points=points, review_at=m.review_at
            ),
            member_id=m.member_id,
            chain_id=m.chain_id,
        )
    return SnapshotPage(published=len(locked), next_after=page.next_after, total=total)

"""What tiering's API reads: a member's tier, history and its explanation, the policy documents, a
what-if simulation (:mod:`tiering.simulation`) and a recalculation's progress."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from shared.db import UnitOfWork
from shared.platform import chain_timezone
from shared.policy import Policy
from shared.problems import InvalidRequest, NotFound

from . import domain, policies, schemas, simulation
from .policies import POLICIES
from .store import Totals, trailing_totals
from .tables import members, recalc_jobs, tier_history


async def window_totals(uow: UnitOfWork, *, member_id: str, policy: Policy, as_of: datetime) -> Totals:
    """(spend_fen, qualifying points) of one member over the policy's trailing window ending at ``as_of``."""
    totals = await trailing_totals(
        uow, member_ids=[member_id], window_days=policy.qualification_window_days, as_of=as_of
    )
    return totals.get(member_id, (0, 0))


async def _member_in_chain(uow: UnitOfWork, *, chain_id: str, member_id: str) -> Any:
    row = (
        await uow.execute(select(members).where(members.c.member_id == member_id, members.c.chain_id == chain_id))
    ).first()
    if row is None:
        raise NotFound("No such member.")
    return row


async def member_tier(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.MemberTier:
    member = await _member_in_chain(uow, chain_id=chain_id, member_id=member_id)
    policy = await POLICIES.get(uow, chain_id)
    spend, points = await window_totals(uow, member_id=member_id, policy=policy, as_of=uow.now())
    p = domain.progress(policy, member.tier, spend, points)
    holds = domain.override_holds(member.override_tier, member.override_until, uow.now())
    return schemas.MemberTier(
        code=member.tier,
        name=domain.tier_name(policy, member.tier),
        since=member.since,
        review_at=member.review_at,
        policy_version=member.policy_version,
        progress=schemas.ProgressView(
            next_tier=p.next_tier,
            spend_fen=p.spend_fen,
            spend_needed_fen=p.spend_needed_fen,
            points=p.points,
            points_needed=p.points_needed,
        ),
        override=schemas.OverrideView(
            tier=member.override_tier, reason=member.override_reason, until=member.override_until
        )
        if holds
        else None,
    )


async def member_tier_history(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.TierHistory:
    await _member_in_chain(uow, chain_id=chain_id, member_id=member_id)
    rows = await uow.execute(
        select(tier_history).where(tier_history.c.member_id == member_id).order_by(tier_history.c.id)
    )
    return schemas.TierHistory(
        items=[
            schemas.TierChangeView(
                from_tier=r.from_tier,
                to_tier=r.to_tier,
                direction=r.direction,
                reason=r.reason,
                effective_at=r.effective_at,
                policy_version=r.policy_version,
                review_at=r.review_at,
                note=r.note,
            )
            for r in rows
        ]
    )


# ---- explain ------------------------------------------------------------------------------------


async def _first_seen(uow: UnitOfWork, member: Any) -> datetime:
    """When the member's tier record starts: enrolment, or the earliest change if that came first."""
    first_change: datetime | None = await uow.session.scalar(
        select(func.min(tier_history.c.effective_at)).where(tier_history.c.member_id == member.member_id)
    )
    return min(t for t in (member.enrolled_at, first_change, member.since) if t is not None)


async def _tier_held_at(uow: UnitOfWork, member: Any, as_of: datetime) -> tuple[str, Any]:
    """(tier held at ``as_of``, the latest history row at or before it, if any)."""
    h = tier_history
    last = (
        await uow.execute(
            select(h)
            .where(h.c.member_id == member.member_id, h.c.effective_at <= as_of)
            .order_by(h.c.effective_at.desc(), h.c.id.desc())
            .limit(1)
        )
    ).first()
    if last is not None:
        return last.to_tier, last
    following = (
        await uow.execute(
            select(h.c.from_tier).where(h.c.member_id == member.member_id).order_by(h.c.effective_at, h.c.id).limit(1)
        )
    ).first()
    return (following.from_tier if following is not None and following.from_tier else member.tier), None


async def explain_tier(uow: UnitOfWork, *, chain_id: str, member_id: str, as_of: datetime) -> schemas.TierExplanation:
    """Why the member held their tier at ``as_of``: the tier then, the policy version in force, its
    thresholds, the trailing-window evidence as of then and the last change before it."""
    member = await _member_in_chain(uow, chain_id=chain_id, member_id=member_id)
    if as_of < await _first_seen(uow, member):
        raise InvalidRequest(
            "The member was not enrolled yet at as_of.",
            errors=[
                {"location": ["query", "as_of"], "message": "before the member's enrolment", "type": "value_error"}
            ],
        )
    policy = await policies.policy_in_force(uow, chain_id=chain_id, as_of=as_of)
    held, last = await _tier_held_at(uow, member, as_of)
    spend, points = (
        await trailing_totals(
            uow, member_ids=[member_id], window_days=policy.qualification_window_days, as_of=as_of, skew=timedelta()
        )
    ).get(member_id, (0, 0))
    review = None
    if last is not None:
        review = last.review_at or domain.review_at(
            last.effective_at, policy.review_months, await chain_timezone(uow.session, chain_id)
        )
    return schemas.TierExplanation(
        member_id=member_id,
        as_of=as_of,
        tier=schemas.TierRef(code=held, name=domain.tier_name(policy, held)),
        policy_version=policy.version,
        thresholds=[
            schemas.Threshold(code=t.code, name=t.name, spend_fen=t.spend_fen, points=t.points) for t in policy.tiers
        ],
        evidence=schemas.Evidence(
            window_start=as_of - timedelta(days=policy.qualification_window_days),
            window_end=as_of,
            spend_fen=spend,
            points=points,
        ),
        qualifies_for=domain.qualified_tier(policy, spend, points),
        last_change=None
        if last is None
        else schemas.LastChange(
            from_tier=last.from_tier,
            to_tier=last.to_tier,
            direction=last.direction,
            reason=last.reason,
            effective_at=last.effective_at,
            policy_version=last.policy_version,
            note=last.note,
        ),
        review_at=review,
    )


# ---- the policy ---------------------------------------------------------------------------------


async def policy(uow: UnitOfWork, *, chain_id: str) -> Policy:
    """The chain's current policy (the default is stored as version 1 on a chain's first read)."""
    return await policies.current_policy(uow, chain_id=chain_id)


async def policy_version(uow: UnitOfWork, *, chain_id: str, version: int) -> Policy:
    """One stored version of the chain's policy."""
    return await policies.policy_version(uow, chain_id=chain_id, version=version)


async def simulate(uow: UnitOfWork, *, chain_id: str, proposal: Policy) -> schemas.Simulation:
    """How the chain's members would sort into tiers under ``proposal`` (see :mod:`tiering.simulation`)."""
    return await simulation.simulate(uow, chain_id=chain_id, proposal=proposal)


def _recalculation_view(row: Any) -> schemas.Recalculation:
    return schemas.Recalculation(
        job_id=row.job_id,
        status=row.status,
        policy_version=row.policy_version,
        total=row.total,
        processed=row.processed,
        moved=row.moved,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
    )


async def recalculation(uow: UnitOfWork, *, chain_id: str, job_id: str) -> schemas.Recalculation:
    """A recalculation's progress (the job itself: :mod:`tiering.recalculation`)."""
    row = (
        await uow.execute(select(recalc_jobs).where(recalc_jobs.c.job_id == job_id, recalc_jobs.c.chain_id == chain_id))
    ).first()
    if row is None:
        raise NotFound("No such recalculation.")
    return _recalculation_view(row)

"""Tiering's event handlers (qualification and upgrades) and the commands its routes call.

Every consumed fact is stored once (``qualifying_facts.source_event_id`` is unique, on top
of the inbox) at the time it happened; the member's tier is then re-evaluated against the
trailing window ending now. Upgrades happen here, at once; downgrades never do (only a
review may move a member down), so a refund or an old fact leaving the window changes
the progress shown, not the tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, bindparam, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import UnitOfWork
from shared.events import (
    CloudEvent,
    MemberEnrolled,
    PointsChanged,
    PurchaseRecorded,
    PurchaseRefunded,
    TierChanged,
    TierProgressChanged,
)
from shared.platform import chain_timezone as shared_chain_timezone
from shared.policy import Policy
from shared.problems import InvalidRequest, NotFound

from . import domain, policies, schemas
from .policies import POLICIES
from .tables import members, qualifying_facts, tier_history

# POS clocks run a little ahead: the enrollment API accepts occurred_at up to 5 minutes in the
# future, and such a fact must count at once rather than at the member's next event.
MAX_CLOCK_SKEW = timedelta(minutes=5)


async def chain_timezone(uow: UnitOfWork, chain_id: str) -> ZoneInfo:
    """The chain's time zone (months of review dates are local months)."""
    return await shared_chain_timezone(uow.session, chain_id)


# ---- queries ------------------------------------------------------------------------------------


async def window_totals(uow: UnitOfWork, *, member_id: str, policy: Policy, as_of: datetime) -> tuple[int, int]:
    """(spend_fen, qualifying points) over the policy's trailing window ending at ``as_of``.

    One range scan of the (member_id, occurred_at) index, so a late event with an old
    occurred_at lands in (or out of) the window exactly where it belongs. Spend never shows
    below zero: a refund of a purchase that already left the window takes nothing more away.
    """
    start = as_of - timedelta(days=policy.qualification_window_days)
    row = (
        await uow.execute(
            select(
                func.coalesce(func.sum(qualifying_facts.c.spend_fen), 0).label("spend_fen"),
                func.coalesce(func.sum(qualifying_facts.c.points), 0).label("points"),
            ).where(
                qualifying_facts.c.member_id == member_id,
                qualifying_facts.c.occurred_at > start,
                qualifying_facts.c.occurred_at <= as_of + MAX_CLOCK_SKEW,
            )
        )
    ).one()
    return max(0, int(row.spend_fen)), max(0, int(row.points))


async def trailing_totals(
    uow: UnitOfWork, *, member_ids: list[str], window_days: int, as_of: datetime, skew: timedelta = MAX_CLOCK_SKEW
) -> dict[str, tuple[int, int]]:
    """(spend_fen, qualifying points) of many members over the window ending at ``as_of``: one
    aggregate query for a whole batch (reviews, recalculation), never one per member. Members
    without facts are absent (they have 0, 0)."""
    if not member_ids:
        return {}
    rows = await uow.execute(
        select(
            qualifying_facts.c.member_id,
            func.sum(qualifying_facts.c.spend_fen).label("spend_fen"),
            func.sum(qualifying_facts.c.points).label("points"),
        )
        .where(
            qualifying_facts.c.member_id.in_(member_ids),
            qualifying_facts.c.occurred_at > as_of - timedelta(days=window_days),
            qualifying_facts.c.occurred_at <= as_of + skew,
        )
        .group_by(qualifying_facts.c.member_id)
    )
    return {r.member_id: (max(0, int(r.spend_fen)), max(0, int(r.points))) for r in rows}


async def _member_for_update(
    uow: UnitOfWork, *, member_id: str, chain_id: str, policy: Policy, enrolled_at: datetime | None = None
) -> Any:
    """The member's row, locked until the transaction ends; created at the lowest tier if unseen.

    PointsChanged comes from another topic than MemberEnrolled, so a fact may arrive first:
    the row it creates is completed (enrolled_at, since) when the enrolment arrives, as long
    as the member has not moved tier meanwhile. ON CONFLICT DO UPDATE locks the row, which
    serialises this member's tier changes with any other writer.
    """
    lowest = domain.lowest_tier(policy).code
    stmt = pg_insert(members).values(
        member_id=member_id,
        chain_id=chain_id,
        tier=lowest,
        since=enrolled_at or uow.now(),
        review_at=None,
        policy_version=policy.version,
        enrolled_at=enrolled_at,
        updated_at=uow.now(),
    )
    set_: dict[str, Any] = {"updated_at": stmt.excluded.updated_at}
    if enrolled_at is not None:
        set_["enrolled_at"] = stmt.excluded.enrolled_at
        set_["since"] = case(
            (and_(members.c.tier == lowest, members.c.enrolled_at.is_(None)), stmt.excluded.since),
            else_=members.c.since,
        )
    stmt = stmt.on_conflict_do_update(index_elements=["member_id"], set_=set_).returning(*members.c)
    return (await uow.execute(stmt)).one()


def _fact_member(event: CloudEvent) -> str | None:
    """The member a consumed event is a qualifying fact of (None: not a fact)."""
    d = event.data
    if isinstance(d, PurchaseRecorded):
        return d.member_id
    if isinstance(d, PurchaseRefunded):
        return d.member_id or event.subject
    if isinstance(d, PointsChanged) and d.qualifying and d.delta != 0:
        return event.subject
    return None


async def prepare(events: list[CloudEvent], uow: UnitOfWork) -> None:
    """A consumer batch's reads, set-based: lock the rows of every member the batch has facts of
    (one query, in member order) and learn which of its facts were stored before (one query)."""
    facts = [(e, m) for e in events if (m := _fact_member(e))]
    if not facts:
        return
    ids = sorted({m for _, m in facts if ("member", m) not in uow.memo})
    if ids:
        for row in await uow.execute(
            select(members).where(members.c.member_id.in_(ids)).order_by(members.c.member_id).with_for_update()
        ):
            uow.memo[("member", row.member_id)] = row
    stored = set(
        (
            await uow.execute(
                select(qualifying_facts.c.source_event_id).where(
                    qualifying_facts.c.source_event_id.in_([e.id for e, _ in facts])
                )
            )
        ).scalars()
    )
    uow.memo.update({("fact", e.id): e.id in stored for e, _ in facts})


async def _record_fact(
    uow: UnitOfWork, event: CloudEvent, *, member_id: str, occurred_at: datetime, spend_fen: int = 0, points: int = 0
) -> bool:
    """Store the fact once per source event; False when it was stored before. Known from the
    batch's :func:`prepare`, the row is queued; otherwise the unique key decides."""
    row = {
        "member_id": member_id,
        "occurred_at": occurred_at,
        "spend_fen": spend_fen,
        "points": points,
        "source_event_id": event.id,
    }
    key = ("fact", event.id)
    if key in uow.memo:
        if uow.memo[key]:
            return False
        uow.memo[key] = True
        uow.insert_later(qualifying_facts, row)
        return True
    inserted = (
        await uow.execute(
            pg_insert(qualifying_facts)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["source_event_id"])
            .returning(qualifying_facts.c.id)
        )
    ).first()
    return inserted is not None


# ---- qualification ------------------------------------------------------------------------------


def _tier_name(policy: Policy, code: str) -> str:
    try:
        return policy.tier(code).name
    except KeyError:
        return code


async def _upgrade(uow: UnitOfWork, *, member: Any, to_tier: str, policy: Policy, chain_id: str) -> Any:
    """Move the member up at once (several tiers in one step if they qualify for it)."""
    now = uow.now()
    review = domain.review_at(now, policy.review_months, await chain_timezone(uow, chain_id))
    changed = (
        await uow.execute(
            update(members)
            .where(members.c.member_id == member.member_id)
            .values(tier=to_tier, since=now, review_at=review, policy_version=policy.version, updated_at=now)
            .returning(*members.c)
        )
    ).one()
    await uow.execute(
        tier_history.insert().values(
            member_id=member.member_id,
            from_tier=member.tier,
            to_tier=to_tier,
            direction="up",
            reason="qualified",
            effective_at=now,
            policy_version=policy.version,
            review_at=review,
        )
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
            to_tier_name=_tier_name(policy, to_tier),
        ),
        member_id=member.member_id,
        chain_id=chain_id,
        time=now,
    )
    return changed


def publish_progress(
    uow: UnitOfWork,
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
    p = domain.progress(policy, tier, spend_fen, points)
    uow.publish(
        TierProgressChanged(
            tier=tier,
            tier_name=_tier_name(policy, tier),
            next_tier=p.next_tier,
            spend_fen=p.spend_fen,
            spend_needed_fen=p.spend_needed_fen,
            points=p.points,
            points_needed=p.points_needed,
            review_at=review_at,
            policy_version=policy.version,
        ),
        member_id=member_id,
        chain_id=chain_id,
        replaces=("progress", member_id),
    )  # one snapshot per batch


def _qualify_at_commit(uow: UnitOfWork, *, member: Any, chain_id: str) -> None:
    """Re-evaluate the (locked) member when the unit of work ends: once per batch, however many of
    its facts the batch holds."""
    uow.memo[("member", member.member_id)] = member
    uow.memo.setdefault("qualify", {})[member.member_id] = chain_id
    uow.at_commit("qualify", _qualify_all)


async def _qualify_all(uow: UnitOfWork) -> None:
    """Upgrade those whose window now reaches a higher tier; publish everyone's progress. The
    windows of a chain's members come from one aggregate query.

    An override that still holds changes nothing here: it is a floor for reviews, and a member
    who qualifies above it is upgraded like anyone else."""
    todo: dict[str, str] = uow.memo.pop("qualify", {})
    by_chain: dict[str, list[str]] = {}
    for member_id, chain_id in todo.items():
        by_chain.setdefault(chain_id, []).append(member_id)
    now = uow.now()
    for chain_id, member_ids in by_chain.items():
        policy = await POLICIES.get(uow, chain_id)
        totals = await trailing_totals(
            uow, member_ids=member_ids, window_days=policy.qualification_window_days, as_of=now
        )
        for member_id in member_ids:
            member = uow.memo[("member", member_id)]
            spend, points = totals.get(member_id, (0, 0))
            qualified = domain.qualified_tier(policy, spend, points)
            if domain.is_upgrade(policy, member.tier, qualified):
                member = uow.memo[("member", member_id)] = await _upgrade(
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


async def _count_fact(
    uow: UnitOfWork, event: CloudEvent, *, member_id: str, occurred_at: datetime, spend_fen: int = 0, points: int = 0
) -> None:
    if not await _record_fact(
        uow, event, member_id=member_id, occurred_at=occurred_at, spend_fen=spend_fen, points=points
    ):
        return  # counted before: nothing changes
    member = uow.memo.get(("member", member_id))
    if member is None:  # not seen before (a fact ahead of the enrolment), or outside a batch
        policy = await POLICIES.get(uow, event.chainid)
        member = await _member_for_update(uow, member_id=member_id, chain_id=event.chainid, policy=policy)
    _qualify_at_commit(uow, member=member, chain_id=event.chainid)


# ---- event handlers -----------------------------------------------------------------------------


async def on_member_enrolled(event: CloudEvent, uow: UnitOfWork) -> None:
    d: MemberEnrolled = event.data  # type: ignore[assignment]
    policy = await POLICIES.get(uow, event.chainid)
    member = await _member_for_update(
        uow, member_id=d.member_id, chain_id=event.chainid, policy=policy, enrolled_at=d.enrolled_at
    )
    _qualify_at_commit(uow, member=member, chain_id=event.chainid)


async def on_purchase_recorded(event: CloudEvent, uow: UnitOfWork) -> None:
    d: PurchaseRecorded = event.data  # type: ignore[assignment]
    await _count_fact(uow, event, member_id=d.member_id, occurred_at=d.occurred_at, spend_fen=d.amount_fen)


async def on_purchase_refunded(event: CloudEvent, uow: UnitOfWork) -> None:
    """A refund takes spend away at the refund's time; it never downgrades (only a review does)."""
    d: PurchaseRefunded = event.data  # type: ignore[assignment]
    await _count_fact(
        uow, event, member_id=d.member_id or event.subject, occurred_at=d.occurred_at, spend_fen=-d.amount_fen
    )


async def on_points_changed(event: CloudEvent, uow: UnitOfWork) -> None:
    """Only qualifying points count (earned from spend and behaviour, and their reversals)."""
    d: PointsChanged = event.data  # type: ignore[assignment]
    if not d.qualifying or d.delta == 0:
        return
    await _count_fact(uow, event, member_id=event.subject, occurred_at=d.occurred_at or event.time, points=d.delta)


HANDLERS = {
    MemberEnrolled: on_member_enrolled,
    PurchaseRecorded: on_purchase_recorded,
    PurchaseRefunded: on_purchase_refunded,
    PointsChanged: on_points_changed,
}


# ---- commands called by routes ------------------------------------------------------------------


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
        name=_tier_name(policy, member.tier),
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


# ---- tier moves of many members (reviews, overrides, recalculation) -----------------------------


@dataclass(frozen=True)
class TierMove:
    """One member's recorded tier decision: a history row and a TierChanged event."""

    member_id: str
    from_tier: str
    to_tier: str
    reason: str
    review_at: datetime | None
    note: str | None = None


async def record_moves(
    uow: UnitOfWork,
    moves: list[TierMove],
    *,
    policy: Policy,
    chain_id: str,
    effective_at: datetime,
    totals: dict[str, tuple[int, int]],
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
                effective_at=effective_at,  # type: ignore[arg-type]
                review_at=m.review_at,
                to_tier_name=_tier_name(policy, m.to_tier),
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
    review = domain.review_at(now, policy.review_months, await chain_timezone(uow, chain_id))
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


# ---- explain ------------------------------------------------------------------------------------


async def _first_seen(uow: UnitOfWork, member: Any) -> datetime:
    """When the member's tier record starts: enrolment, or the earliest change if that came first."""
    first_change = await uow.session.scalar(
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
            last.effective_at, policy.review_months, await chain_timezone(uow, chain_id)
        )
    return schemas.TierExplanation(
        member_id=member_id,
        as_of=as_of,
        tier=schemas.TierRef(code=held, name=_tier_name(policy, held)),
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

"""Enrollment's commands (from the API) and event handlers (the status view).

Every function takes the unit of work first and keyword-only data; it raises
``shared.problems`` errors, never HTTP ones.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, literal, select, text, true, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from shared.api import request_hash
from shared.db import UnitOfWork
from shared.events import (
    ActivityRecorded,
    BenefitGranted,
    BenefitRedeemed,
    BenefitRevoked,
    CloudEvent,
    Consents,
    MemberEnrolled,
    MemberUpdated,
    PointsChanged,
    PolicyChanged,
    PurchaseItem,
    PurchaseRecorded,
    PurchaseRefunded,
    ReferralCompleted,
    TierChanged,
    TierProgressChanged,
)
from shared.observability import mask_phone
from shared.problems import Conflict, InvalidRequest, NotFound

from . import schemas
from .tables import activities, member_status, members, policies, purchases, referrals, refunds

MAX_CLOCK_SKEW = timedelta(minutes=5)
EXPIRING_HORIZON = timedelta(days=90)  # the status view lists points expiring this soon
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def new_referral_code() -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))


def profile(row: Any, *, reveal_phone: bool, referral_status: str | None = None) -> schemas.MemberProfile:
    return schemas.MemberProfile(
        member_id=row.member_id,
        member_no=row.member_no,
        name=row.name,
        phone=row.phone if reveal_phone else mask_phone(row.phone),
        birthday=row.birthday,
        home_clinic_id=row.home_clinic_id,
        source=row.source,
        referral_code=row.referral_code,
        referred_by=row.referred_by,
        consents=Consents(**row.consents),
        email=row.email,
        enrolled_at=row.enrolled_at,
        referrals_completed=row.referrals_completed,
        referral_status=referral_status,
    )


async def referral_status_of(uow: UnitOfWork, *, member_id: str) -> str | None:
    return await uow.session.scalar(select(referrals.c.status).where(referrals.c.referee_id == member_id))


async def get_member(uow: UnitOfWork, *, chain_id: str, member_id: str, lock: bool = False) -> Any:
    stmt = select(members).where(members.c.member_id == member_id, members.c.chain_id == chain_id)
    row = (await uow.execute(stmt.with_for_update() if lock else stmt)).first()
    if row is None:
        raise NotFound("No such member.")
    return row


async def find_by_phone(uow: UnitOfWork, *, chain_id: str, phone: str) -> list[Any]:
    return list(
        (await uow.execute(select(members).where(members.c.chain_id == chain_id, members.c.phone == phone))).all()
    )


async def _referrer_for(uow: UnitOfWork, *, chain_id: str, code: str, phone: str) -> str:
    referrer = (
        await uow.execute(
            select(members.c.member_id, members.c.chain_id, members.c.phone).where(
                members.c.referral_code == code.upper()
            )
        )
    ).first()
    if referrer is None or referrer.chain_id != chain_id:
        # another chain's code is reported exactly like an unknown one: nothing leaks across chains
        raise InvalidRequest(
            "Unknown referral code.",
            errors=[{"location": ["body", "referral_code"], "message": "unknown referral code", "type": "value_error"}],
        )
    if referrer.phone == phone:
        raise InvalidRequest(
            "A member cannot refer themselves.",
            errors=[{"location": ["body", "referral_code"], "message": "self-referral", "type": "value_error"}],
        )
    return str(referrer.member_id)


async def enrol(uow: UnitOfWork, *, chain_id: str, req: schemas.EnrolRequest) -> schemas.EnrolResponse:
    referred_by = None
    if req.referral_code:
        referred_by = await _referrer_for(uow, chain_id=chain_id, code=req.referral_code, phone=req.phone)
    existing = await find_by_phone(uow, chain_id=chain_id, phone=req.phone)
    if existing:
        raise Conflict("A member with this phone is already enrolled in the chain.", member_id=existing[0].member_id)
    now = uow.now()
    member_id = str(uuid.uuid4())
    seq = await uow.session.scalar(text("SELECT nextval('enrollment.member_no_seq')"))
    member_no = f"M{seq:09d}"
    code = new_referral_code()
    try:
        async with uow.session.begin_nested():
            await uow.execute(
                members.insert().values(
                    member_id=member_id,
                    chain_id=chain_id,
                    member_no=member_no,
                    phone=req.phone,
                    name=req.name,
                    birthday=req.birthday,
                    home_clinic_id=req.home_clinic_id,
                    source=req.source,
                    referral_code=code,
                    referred_by=referred_by,
                    consents=req.consents.model_dump(),
                    email=req.email,
                    enrolled_at=now,
                    updated_at=now,
                )
            )
    except IntegrityError as exc:
        # a concurrent enrolment of the same phone won the race
        raise Conflict("A member with this phone is already enrolled in the chain.") from exc
    if referred_by is not None:
        await uow.execute(
            referrals.insert().values(referee_id=member_id, referrer_id=referred_by, chain_id=chain_id, created_at=now)
        )
    uow.publish(
        MemberEnrolled(
            member_id=member_id,
            member_no=member_no,
            home_clinic_id=req.home_clinic_id,
            source=req.source,
            referred_by=referred_by,
            birthday=req.birthday,
            enrolled_at=now,
            name=req.name,
            phone=req.phone,
            email=req.email,
            consents=req.consents,
        ),
        member_id=member_id,
        chain_id=chain_id,
        time=now,
    )
    return schemas.EnrolResponse(member_id=member_id, member_no=member_no, referral_code=code, enrolled_at=now)


async def update_member(uow: UnitOfWork, *, chain_id: str, member_id: str, patch: schemas.MemberPatch) -> Any:
    await get_member(uow, chain_id=chain_id, member_id=member_id, lock=True)
    values: dict[str, Any] = patch.model_dump(exclude_unset=True)
    if "consents" in values and values["consents"] is not None:
        values["consents"] = patch.consents.model_dump()  # type: ignore[union-attr]
    if not values:
        raise InvalidRequest("Nothing to change: send name, email or consents.")
    now = uow.now()
    await uow.execute(update(members).where(members.c.member_id == member_id).values(**values, updated_at=now))
    uow.publish(
        MemberUpdated(member_id=member_id, name=patch.name, email=patch.email, consents=patch.consents, updated_at=now),
        member_id=member_id,
        chain_id=chain_id,
        time=now,
    )
    return await get_member(uow, chain_id=chain_id, member_id=member_id)


def _reject_future(uow: UnitOfWork, when: Any, field: str) -> None:
    if when > uow.now() + MAX_CLOCK_SKEW:
        raise InvalidRequest(
            f"{field} is in the future.",
            errors=[{"location": ["body", field], "message": "must not be in the future", "type": "value_error"}],
        )


async def _member_in_chain(uow: UnitOfWork, *, chain_id: str, member_id: str) -> None:
    found = await uow.session.scalar(
        select(members.c.member_id).where(members.c.member_id == member_id, members.c.chain_id == chain_id)
    )
    if found is None:
        raise InvalidRequest(
            "Unknown member_id.",
            errors=[
                {"location": ["body", "member_id"], "message": "no such member in this chain", "type": "value_error"}
            ],
        )


async def record_purchase(
    uow: UnitOfWork, *, chain_id: str, req: schemas.PurchaseRequest
) -> tuple[bool, schemas.PurchaseAccepted]:
    """Record a POS purchase once per (clinic, pos_txn_id). Returns (created, response).

    The common case is one statement: insert the purchase if its member is in the chain and the
    (clinic, pos_txn_id) is new. Only when nothing was inserted does a second read tell a retry
    (same body: the recorded purchase; another body: 409) from an unknown member (422)."""
    digest = request_hash(req.model_dump(mode="json"))
    _reject_future(uow, req.occurred_at, "occurred_at")
    purchase_id = str(uuid.uuid4())
    row = {
        "purchase_id": purchase_id,
        "chain_id": chain_id,
        "clinic_id": req.clinic_id,
        "pos_txn_id": req.pos_txn_id,
        "member_id": req.member_id,
        "amount_fen": req.amount_fen,
        "currency": req.currency,
        "occurred_at": req.occurred_at,
        "items": [i.model_dump() for i in req.items],
        "request_hash": digest,
    }
    member_in_chain = exists().where(members.c.member_id == req.member_id, members.c.chain_id == chain_id)
    inserted = (
        await uow.execute(
            pg_insert(purchases)
            .from_select(
                list(row),
                select(*[literal(v, purchases.c[k].type) for k, v in row.items()]).where(member_in_chain),
            )
            .on_conflict_do_nothing()
            .returning(purchases.c.purchase_id)
        )
    ).first()
    if inserted is not None:
        uow.publish(
            PurchaseRecorded(
                purchase_id=purchase_id,
                pos_txn_id=req.pos_txn_id,
                clinic_id=req.clinic_id,
                member_id=req.member_id,
                amount_fen=req.amount_fen,
                occurred_at=req.occurred_at,
                items=[PurchaseItem(**i.model_dump()) for i in req.items],
            ),
            member_id=req.member_id,
            chain_id=chain_id,
        )
        return True, schemas.PurchaseAccepted(purchase_id=purchase_id)
    prior = (
        await uow.execute(
            select(purchases.c.purchase_id, purchases.c.request_hash).where(
                purchases.c.chain_id == chain_id,
                purchases.c.clinic_id == req.clinic_id,
                purchases.c.pos_txn_id == req.pos_txn_id,
            )
        )
    ).first()
    if prior is None:  # not a retry: the member is not in this chain...
        await _member_in_chain(uow, chain_id=chain_id, member_id=req.member_id)
        return await record_purchase(uow, chain_id=chain_id, req=req)  # ...or was enrolled a moment ago
    if prior.request_hash != digest:
        raise Conflict(
            "This pos_txn_id was already recorded at this clinic with a different body.", purchase_id=prior.purchase_id
        )
    return False, schemas.PurchaseAccepted(purchase_id=prior.purchase_id)


async def record_activity(
    uow: UnitOfWork, *, chain_id: str, req: schemas.ActivityRequest
) -> tuple[bool, schemas.ActivityAccepted]:
    digest = request_hash(req.model_dump(mode="json"))
    key = (activities.c.chain_id == chain_id, activities.c.activity_id == req.activity_id)
    prior = await uow.session.scalar(select(activities.c.request_hash).where(*key))
    if prior is None:
        _reject_future(uow, req.occurred_at, "occurred_at")
        await _member_in_chain(uow, chain_id=chain_id, member_id=req.member_id)
        inserted = (
            await uow.execute(
                pg_insert(activities)
                .values(
                    chain_id=chain_id,
                    activity_id=req.activity_id,
                    member_id=req.member_id,
                    clinic_id=req.clinic_id,
                    kind=req.kind,
                    occurred_at=req.occurred_at,
                    request_hash=digest,
                )
                .on_conflict_do_nothing()
                .returning(activities.c.activity_id)
            )
        ).first()
        if inserted is not None:
            uow.publish(
                ActivityRecorded(
                    activity_id=req.activity_id,
                    kind=req.kind,
                    clinic_id=req.clinic_id,
                    occurred_at=req.occurred_at,
                    member_id=req.member_id,
                ),
                member_id=req.member_id,
                chain_id=chain_id,
            )
            return True, schemas.ActivityAccepted(activity_id=req.activity_id)
        prior = await uow.session.scalar(select(activities.c.request_hash).where(*key))
    if prior != digest:
        raise Conflict("This activity_id was already recorded with a different body.")
    return False, schemas.ActivityAccepted(activity_id=req.activity_id)


async def record_refund(
    uow: UnitOfWork, *, chain_id: str, purchase_id: str, req: schemas.RefundRequest
) -> tuple[bool, schemas.RefundAccepted]:
    """Record a (partial) refund once per refund_id; refunds of a purchase never exceed it."""
    digest = request_hash({**req.model_dump(mode="json"), "purchase_id": purchase_id})
    key = (refunds.c.chain_id == chain_id, refunds.c.refund_id == req.refund_id)
    # the purchase row lock serializes refunds of one purchase: the remaining amount is checked
    # and reduced by one transaction at a time
    purchase = (
        await uow.execute(
            select(purchases)
            .where(purchases.c.purchase_id == purchase_id, purchases.c.chain_id == chain_id)
            .with_for_update()
        )
    ).first()
    if purchase is None:
        raise NotFound("No such purchase.")
    prior = (await uow.execute(select(refunds.c.request_hash).where(*key))).first()
    if prior is not None:
        if prior.request_hash != digest:
            raise Conflict("This refund_id was already recorded with a different body or purchase.")
        return False, _refund_accepted(req, purchase)
    if req.member_id is not None and req.member_id != purchase.member_id:
        raise InvalidRequest(
            "The purchase belongs to another member.",
            errors=[
                {"location": ["body", "member_id"], "message": "not this purchase's member", "type": "value_error"}
            ],
        )
    _reject_future(uow, req.occurred_at, "occurred_at")
    if req.occurred_at < purchase.occurred_at:
        raise InvalidRequest(
            "A refund cannot precede its purchase.",
            errors=[{"location": ["body", "occurred_at"], "message": "before the purchase", "type": "value_error"}],
        )
    remaining = purchase.amount_fen - purchase.refunded_fen
    if req.amount_fen > remaining:
        raise Conflict(
            f"The refund ({req.amount_fen} fen) exceeds what remains of the purchase ({remaining} fen).",
            remaining_fen=remaining,
        )
    await uow.execute(
        refunds.insert().values(
            chain_id=chain_id,
            refund_id=req.refund_id,
            purchase_id=purchase_id,
            member_id=purchase.member_id,
            amount_fen=req.amount_fen,
            occurred_at=req.occurred_at,
            request_hash=digest,
        )
    )
    updated = (
        await uow.execute(
            update(purchases)
            .where(purchases.c.purchase_id == purchase_id)
            .values(refunded_fen=purchases.c.refunded_fen + req.amount_fen)
            .returning(purchases)
        )
    ).one()
    uow.publish(
        PurchaseRefunded(
            purchase_id=purchase_id,
            refund_id=req.refund_id,
            amount_fen=req.amount_fen,
            occurred_at=req.occurred_at,
            member_id=purchase.member_id,
        ),
        member_id=purchase.member_id,
        chain_id=chain_id,
    )
    return True, _refund_accepted(req, updated)


def _refund_accepted(req: schemas.RefundRequest, purchase: Any) -> schemas.RefundAccepted:
    return schemas.RefundAccepted(
        refund_id=req.refund_id,
        purchase_id=purchase.purchase_id,
        amount_fen=req.amount_fen,
        refunded_fen=purchase.refunded_fen,
        remaining_fen=purchase.amount_fen - purchase.refunded_fen,
    )


async def complete_due_referrals(uow: UnitOfWork, *, as_of: datetime, limit: int = 500) -> int:
    """Complete pending referrals whose referee made a purchase of at least the policy's amount
    that has outlived the return window (pending_days) without being refunded below it.

    Safe on several replicas: pending rows are claimed with SKIP LOCKED and completed in the
    same transaction; the referrer's count is an atomic increment (the 3rd gets the larger voucher).
    """
    chains = (
        (await uow.execute(select(referrals.c.chain_id).where(referrals.c.status == "pending").distinct()))
        .scalars()
        .all()
    )
    completed = 0
    for chain_id in chains:
        policy = await policies.current(uow.session, chain_id)
        window_end = as_of - timedelta(days=policy.pending_days)
        candidate = (
            select(purchases.c.purchase_id)
            .where(
                purchases.c.member_id == referrals.c.referee_id,
                purchases.c.amount_fen - purchases.c.refunded_fen >= policy.referral.min_purchase_fen,
                purchases.c.occurred_at <= window_end,
            )
            .order_by(purchases.c.occurred_at, purchases.c.purchase_id)
            .limit(1)
            .lateral("candidate")
        )
        due = (
            await uow.execute(
                select(referrals.c.referee_id, referrals.c.referrer_id, candidate.c.purchase_id)
                .select_from(referrals.join(candidate, true()))
                .where(referrals.c.chain_id == chain_id, referrals.c.status == "pending")
                .order_by(referrals.c.created_at)
                .limit(limit)
                .with_for_update(of=referrals, skip_locked=True)
            )
        ).all()
        for row in due:
            count = (
                await uow.execute(
                    update(members)
                    .where(members.c.member_id == row.referrer_id)
                    .values(referrals_completed=members.c.referrals_completed + 1)
                    .returning(members.c.referrals_completed)
                )
            ).scalar_one()
            await uow.execute(
                update(referrals)
                .where(referrals.c.referee_id == row.referee_id)
                .values(status="completed", purchase_id=row.purchase_id, referral_count=count, completed_at=as_of)
            )
            uow.publish(
                ReferralCompleted(
                    referrer_id=row.referrer_id,
                    referee_id=row.referee_id,
                    purchase_id=row.purchase_id,
                    completed_at=as_of,
                    referral_count=count,
                ),
                member_id=row.referrer_id,
                chain_id=chain_id,
                time=as_of,
            )
            completed += 1
    return completed


# ---- the member status view ---------------------------------------------------------------------

DEFAULT_TIER_NAMES = {"member": "普通会员", "silver": "银卡会员", "gold": "金卡会员", "diamond": "钻石会员"}


async def _set_status(uow: UnitOfWork, member_id: str, *, insert: dict[str, Any] | None = None, **values: Any) -> None:
    """Upsert columns of the status row. ``values`` may be SQL expressions over the current row
    (for the update); ``insert`` gives what a first row gets instead where they differ."""
    row = {**values, **(insert or {})}
    stmt = pg_insert(member_status).values(member_id=member_id, updated_at=func.now(), **row)
    await uow.execute(
        stmt.on_conflict_do_update(index_elements=["member_id"], set_={**values, "updated_at": func.now()})
    )


def _set_snapshot_at_commit(uow: UnitOfWork, member_id: str, **docs: Any) -> None:
    """Points, tier and progress are snapshots: the newest of a batch replaces the rest (one member's
    events arrive in order), and every member's newest are written in one upsert per set of columns
    when the unit of work ends."""
    uow.memo.setdefault("status snapshots", {}).setdefault(member_id, {}).update(docs)
    uow.at_commit("status snapshots", _write_snapshots)


async def _write_snapshots(uow: UnitOfWork) -> None:
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for member_id, docs in uow.memo.pop("status snapshots", {}).items():
        by_columns.setdefault(tuple(sorted(docs)), []).append({"member_id": member_id, **docs})
    for columns, rows in by_columns.items():
        stmt = pg_insert(member_status)
        await uow.execute(
            stmt.on_conflict_do_update(
                index_elements=["member_id"], set_={**{c: stmt.excluded[c] for c in columns}, "updated_at": func.now()}
            ),
            rows,
        )


async def on_points_changed(event: CloudEvent, uow: UnitOfWork) -> None:
    d: PointsChanged = event.data  # type: ignore[assignment]
    doc = {
        "balance": d.balance,
        "available": d.available,
        "pending": d.pending,
        "expiring": [e.model_dump(mode="json") for e in d.expiring] if d.expiring is not None else None,
        "pending_until": [p.model_dump(mode="json") for p in d.pending_until] if d.pending_until is not None else None,
    }
    _set_snapshot_at_commit(uow, event.subject, points=doc)


async def on_tier_changed(event: CloudEvent, uow: UnitOfWork) -> None:
    d: TierChanged = event.data  # type: ignore[assignment]
    doc = {
        "code": d.to_tier,
        "name": d.to_tier_name or DEFAULT_TIER_NAMES.get(d.to_tier, d.to_tier),
        "since": d.effective_at.isoformat(),
        "review_at": d.review_at.isoformat() if d.review_at else None,
    }
    _set_snapshot_at_commit(uow, event.subject, tier=doc)


async def on_tier_progress(event: CloudEvent, uow: UnitOfWork) -> None:
    d: TierProgressChanged = event.data  # type: ignore[assignment]
    _set_snapshot_at_commit(uow, event.subject, progress=d.model_dump(mode="json"))


async def on_policy_changed(event: CloudEvent, uow: UnitOfWork) -> None:
    await policies.on_policy_changed(event, uow)


def _benefit_doc(d: Any) -> dict[str, Any]:
    return {
        "benefit_id": d.benefit_id,
        "code": d.code,
        "remaining_uses": d.remaining_uses,
        "valid_until": d.valid_until.isoformat() if d.valid_until else None,
    }


async def on_benefit_granted(event: CloudEvent, uow: UnitOfWork) -> None:
    d: BenefitGranted = event.data  # type: ignore[assignment]
    entry = {d.benefit_id: _benefit_doc(d)}
    await _set_status(
        uow,
        event.subject,
        insert={"benefits": entry},
        benefits=member_status.c.benefits.op("||")(literal(entry, JSONB)),
    )


async def on_benefit_redeemed(event: CloudEvent, uow: UnitOfWork) -> None:
    await on_benefit_granted(event, uow)  # same shape: the entitlement's new remaining_uses


async def on_benefit_revoked(event: CloudEvent, uow: UnitOfWork) -> None:
    d: BenefitRevoked = event.data  # type: ignore[assignment]
    await _set_status(
        uow, event.subject, insert={"benefits": {}}, benefits=member_status.c.benefits.op("-")(d.benefit_id)
    )


def _points_now(points: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The points part of the view as of ``now``: pending points whose return window has passed since
    the last PointsChanged count as available (points release them without an event)."""
    schedule = points.get("pending_until")
    if not schedule or points.get("available") is None or points.get("pending") is None:
        return points
    released = sum(p["points"] for p in schedule if datetime.fromisoformat(p["available_at"]) <= now)
    return {**points, "available": points["available"] + released, "pending": points["pending"] - released}


async def member_status_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.MemberStatus:
    member = await get_member(uow, chain_id=chain_id, member_id=member_id)
    row = (await uow.execute(select(member_status).where(member_status.c.member_id == member_id))).first()
    tier = (row.tier if row else None) or {
        "code": "member",
        "name": DEFAULT_TIER_NAMES["member"],
        "since": member.enrolled_at.isoformat(),
        "review_at": None,
    }
    progress = (row.progress if row else None) or {}
    if progress.get("review_at") and progress.get("tier") == tier["code"]:
        tier = {**tier, "review_at": progress["review_at"]}  # the newest review date tiering announced
    points = _points_now((row.points if row else None) or {"balance": 0}, uow.now())
    horizon = (uow.now() + EXPIRING_HORIZON).date()
    expiring = [e for e in (points.get("expiring") or []) if date.fromisoformat(e["expires_on"]) <= horizon]
    now = uow.now()
    benefits = (
        sorted(
            (
                b
                for b in (row.benefits or {}).values()
                if b["valid_until"] is None or datetime.fromisoformat(b["valid_until"]) > now
            ),  # expired ones drop out
            key=lambda b: (b["code"], b["benefit_id"]),
        )
        if row
        else []
    )
    return schemas.MemberStatus(
        member_id=member_id,
        tier=schemas.TierView(**tier),
        progress=schemas.ProgressView(
            next_tier=progress.get("next_tier"),
            spend_fen=progress.get("spend_fen", 0),
            spend_needed_fen=progress.get("spend_needed_fen", 0),
            points=progress.get("points", 0),
            points_needed=progress.get("points_needed", 0),
        ),
        points=schemas.PointsView(
            balance=points.get("balance", 0),
            available=points.get("available"),
            pending=points.get("pending"),
            expiring=expiring,
        ),
        benefits=[schemas.BenefitView(**b) for b in benefits],
        as_of=row.updated_at if row else member.enrolled_at,
    )


HANDLERS = {
    PointsChanged: on_points_changed,
    TierChanged: on_tier_changed,
    TierProgressChanged: on_tier_progress,
    BenefitGranted: on_benefit_granted,
    BenefitRedeemed: on_benefit_redeemed,
    BenefitRevoked: on_benefit_revoked,
    PolicyChanged: on_policy_changed,
}

"""Enrollment's commands (what the API changes): enrolment, profile changes, purchases, activities,
refunds.

Every function takes the unit of work first and keyword-only data; it raises
``shared.problems`` errors, never HTTP ones. The decisions are the domain's (:mod:`.domain`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Row, exists, literal, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from shared.api import request_hash
from shared.db import UnitOfWork
from shared.events import (
    ActivityRecorded,
    MemberEnrolled,
    MemberUpdated,
    PurchaseItem,
    PurchaseRecorded,
    PurchaseRefunded,
)
from shared.problems import Conflict, Forbidden, InvalidRequest, NotFound

from . import domain, schemas
from .queries import find_by_phone, get_member
from .tables import activities, members, policies, purchases, referrals, refunds


async def _referrer_for(uow: UnitOfWork, *, chain_id: str, code: str, phone: str) -> str:
    row = (
        await uow.execute(
            select(members.c.member_id, members.c.chain_id, members.c.phone).where(
                members.c.referral_code == code.upper()
            )
        )
    ).first()
    referrer = domain.Referrer(row.member_id, row.chain_id, row.phone) if row is not None else None
    try:
        return domain.referrer_for(referrer, chain_id=chain_id, phone=phone)
    except domain.UnknownReferralCode as exc:
        raise InvalidRequest(
            "Unknown referral code.",
            errors=[{"location": ["body", "referral_code"], "message": "unknown referral code", "type": "value_error"}],
        ) from exc
    except domain.SelfReferral as exc:
        raise InvalidRequest(
            "A member cannot refer themselves.",
            errors=[{"location": ["body", "referral_code"], "message": "self-referral", "type": "value_error"}],
        ) from exc


async def enrol(
    uow: UnitOfWork,
    *,
    chain_id: str,
    req: schemas.EnrolRequest,
    member_id: str | None = None,
    enrolled_at: datetime | None = None,
) -> schemas.EnrolResponse:
    """Enrol a member. An import gives the ``member_id`` and ``enrolled_at`` the member already has."""
    referred_by = None
    if req.referral_code:
        referred_by = await _referrer_for(uow, chain_id=chain_id, code=req.referral_code, phone=req.phone)
    existing = await find_by_phone(uow, chain_id=chain_id, phone=req.phone)
    if existing:
        raise Conflict("A member with this phone is already enrolled in the chain.", member_id=existing[0].member_id)
    now = uow.now()
    if enrolled_at is not None:
        _reject_future(uow, enrolled_at, "enrolled_at")
    member_id = member_id or str(uuid.uuid4())
    seq = await uow.session.scalar(text("SELECT nextval('enrollment.member_no_seq')"))
    member_no = f"M{seq:09d}"
    code = domain.new_referral_code()
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
                    enrolled_at=enrolled_at or now,
                    updated_at=now,
                )
            )
    except IntegrityError as exc:
        # a concurrent enrolment of the same phone won the race (or, importing, the member id is taken)
        raise Conflict("A member with this phone (or id) is already enrolled.") from exc
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
            enrolled_at=enrolled_at or now,
            name=req.name,
            phone=req.phone,
            email=req.email,
            consents=req.consents,
        ),
        member_id=member_id,
        chain_id=chain_id,
        time=now,
    )
    return schemas.EnrolResponse(
        member_id=member_id, member_no=member_no, referral_code=code, enrolled_at=enrolled_at or now
    )


async def update_member(uow: UnitOfWork, *, chain_id: str, member_id: str, patch: schemas.MemberPatch) -> Row[Any]:
    await get_member(uow, chain_id=chain_id, member_id=member_id, lock=True)
    values: dict[str, Any] = patch.model_dump(exclude_unset=True)
    if patch.consents is not None:  # every consent, not only those the client sent
        values["consents"] = patch.consents.model_dump()
    if not values:
        raise InvalidRequest("Nothing to change: send name, email or consents.")
    now = uow.now()
    await uow.execute(update(members).where(members.c.member_id == member_id).values(**values, updated_at=now))
    uow.publish(
        MemberUpdated(
            member_id=member_id,
            name=patch.name,
            email=patch.email,
            consents=patch.consents,
            updated_at=now,
            email_removed=patch.removes_email,
        ),
        member_id=member_id,
        chain_id=chain_id,
        time=now,
    )
    return await get_member(uow, chain_id=chain_id, member_id=member_id)


def _reject_future(uow: UnitOfWork, when: datetime, field: str) -> None:
    if domain.in_the_future(when, uow.now()):
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


async def implausible_amount(uow: UnitOfWork, *, chain_id: str, amount_fen: int) -> InvalidRequest | None:
    """The 422 for a purchase above the chain's ceiling (``Policy.max_purchase_fen``), None when plausible."""
    ceiling = (await policies.current(uow.session, chain_id)).max_purchase_fen
    if not domain.implausible_amount(amount_fen, ceiling):
        return None
    return InvalidRequest(
        f"amount_fen ({amount_fen}) is above the largest purchase this chain accepts ({ceiling} fen).",
        errors=[{"location": ["body", "amount_fen"], "message": f"must be at most {ceiling}", "type": "value_error"}],
        max_purchase_fen=ceiling,
    )


def purchase_row(chain_id: str, req: schemas.PurchaseRequest, purchase_id: str) -> dict[str, Any]:
    """The purchases row of a request (its hash tells a retry from a different body under one key)."""
    return {
        "purchase_id": purchase_id,
        "chain_id": chain_id,
        "clinic_id": req.clinic_id,
        "pos_txn_id": req.pos_txn_id,
        "member_id": req.member_id,
        "amount_fen": req.amount_fen,
        "currency": req.currency,
        "occurred_at": req.occurred_at,
        "items": [i.model_dump() for i in req.items],
        "request_hash": request_hash(req.model_dump(mode="json")),
    }


def purchase_recorded(req: schemas.PurchaseRequest, purchase_id: str) -> PurchaseRecorded:
    return PurchaseRecorded(
        purchase_id=purchase_id,
        pos_txn_id=req.pos_txn_id,
        clinic_id=req.clinic_id,
        member_id=req.member_id,
        amount_fen=req.amount_fen,
        occurred_at=req.occurred_at,
        items=[PurchaseItem(**i.model_dump()) for i in req.items],
    )


async def record_purchase(
    uow: UnitOfWork, *, chain_id: str, req: schemas.PurchaseRequest
) -> tuple[bool, schemas.PurchaseAccepted]:
    """Record a POS purchase once per (clinic, pos_txn_id). Returns (created, response).

    The common case is one statement: insert the purchase if its member is in the chain and the
    (clinic, pos_txn_id) is new. Only when nothing was inserted does a second read tell a retry
    (same body: the recorded purchase; another body: 409) from an unknown member (422)."""
    _reject_future(uow, req.occurred_at, "occurred_at")
    refused = await implausible_amount(uow, chain_id=chain_id, amount_fen=req.amount_fen)
    if refused is not None:
        raise refused
    purchase_id = str(uuid.uuid4())
    row = purchase_row(chain_id, req, purchase_id)
    digest = row["request_hash"]
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
        uow.publish(purchase_recorded(req, purchase_id), member_id=req.member_id, chain_id=chain_id)
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


def _purchase(row: Row[Any]) -> domain.Purchase:
    return domain.Purchase(
        purchase_id=row.purchase_id,
        member_id=row.member_id,
        amount_fen=row.amount_fen,
        refunded_fen=row.refunded_fen,
        occurred_at=row.occurred_at,
    )


async def record_refund(
    uow: UnitOfWork,
    *,
    chain_id: str,
    purchase_id: str,
    req: schemas.RefundRequest,
    clinic_id: str | None = None,
) -> tuple[bool, schemas.RefundAccepted]:
    """Record a (partial) refund once per refund_id; refunds of a purchase never exceed it. ``clinic_id``:
    the caller's key is bound to that clinic, and may refund its purchases only (403)."""
    digest = request_hash({**req.model_dump(mode="json"), "purchase_id": purchase_id})
    key = (refunds.c.chain_id == chain_id, refunds.c.refund_id == req.refund_id)
    # the purchase row lock serializes refunds of one purchase: the remaining amount is checked
    # and reduced by one transaction at a time
    row = (
        await uow.execute(
            select(purchases)
            .where(purchases.c.purchase_id == purchase_id, purchases.c.chain_id == chain_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound("No such purchase.")
    if clinic_id is not None and row.clinic_id != clinic_id:
        raise Forbidden("This key is bound to another clinic.")
    purchase = _purchase(row)
    prior = (await uow.execute(select(refunds.c.request_hash).where(*key))).first()
    if prior is not None:
        if prior.request_hash != digest:
            raise Conflict("This refund_id was already recorded with a different body or purchase.")
        return False, _refund_accepted(req, purchase)
    try:
        domain.accept_refund(
            purchase, amount_fen=req.amount_fen, occurred_at=req.occurred_at, member_id=req.member_id, now=uow.now()
        )
    except domain.RefundRefused as refused:
        raise _refund_problem(refused) from refused
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
    return True, _refund_accepted(req, _purchase(updated))


def _refund_problem(refused: domain.RefundRefused) -> InvalidRequest | Conflict:
    if isinstance(refused, domain.NotThePurchasesMember):
        return InvalidRequest(
            "The purchase belongs to another member.",
            errors=[
                {"location": ["body", "member_id"], "message": "not this purchase's member", "type": "value_error"}
            ],
        )
    if isinstance(refused, domain.RefundInTheFuture):
        return InvalidRequest(
            "occurred_at is in the future.",
            errors=[
                {"location": ["body", "occurred_at"], "message": "must not be in the future", "type": "value_error"}
            ],
        )
    if isinstance(refused, domain.RefundBeforePurchase):
        return InvalidRequest(
            "A refund cannot precede its purchase.",
            errors=[{"location": ["body", "occurred_at"], "message": "before the purchase", "type": "value_error"}],
        )
    if isinstance(refused, domain.RefundExceedsPurchase):
        return Conflict(
            f"The refund ({refused.amount_fen} fen) exceeds what remains of the purchase"
            f" ({refused.remaining_fen} fen).",
            remaining_fen=refused.remaining_fen,
        )
    raise TypeError(f"no problem for the refusal {refused!r}")


def _refund_accepted(req: schemas.RefundRequest, purchase: domain.Purchase) -> schemas.RefundAccepted:
    return schemas.RefundAccepted(
        refund_id=req.refund_id,
        purchase_id=purchase.purchase_id,
        amount_fen=req.amount_fen,
        refunded_fen=purchase.refunded_fen,
        remaining_fen=purchase.remaining_fen,
    )

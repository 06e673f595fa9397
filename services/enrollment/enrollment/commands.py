"""Enrollment's commands (what the API changes): enrolment, profile changes, purchases, activities,
refunds.

Every function takes the unit of work first and keyword-only data; it raises
``shared.problems`` errors, never HTTP ones. The decisions are the domain's (:mod:`.domain`).
"""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Row,
    SmallInteger,
    TextClause,
    bindparam,
    delete,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from shared.api import request_hash
from shared.audit import record_audit
from shared.crypto import ContactDetails, seal_contact
from shared.db import UnitOfWork
from shared.events import (
    ActivityRecorded,
    Consents,
    MemberEnrolled,
    MemberErased,
    MemberUpdated,
    PurchaseRecorded,
    PurchaseRefunded,
)
from shared.personal_data import create_data_key, data_key_of, destroy_data_key, keyring_of
from shared.platform import Principal, chain_timezone
from shared.problems import Conflict, Forbidden, InvalidRequest, NotFound

from . import domain, schemas
from .queries import find_by_phone, get_member
from .tables import activities, consent_records, members, policies, purchases, referrals, refunds


async def _referrer_for(uow: UnitOfWork, *, chain_id: str, code: str, phone: str) -> str:
    row = (
        await uow.execute(
            select(members.c.member_id, members.c.chain_id, members.c.phone).where(
                members.c.referral_code == code.upper(), members.c.erased_at.is_(None)
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
    consent_source: str = "app",
) -> schemas.EnrolResponse:
    """Enrol a member. An import gives the ``member_id`` and ``enrolled_at`` the member already has.

    The member's contact details go on the wire sealed with their new data key (SPEC §8); their
    consents start the consent history; a member under 14 needs ``guardian_consent``."""
    tz = await chain_timezone(uow.session, chain_id)
    if domain.needs_guardian_consent(req.birthday, uow.now().astimezone(tz).date()) and not req.guardian_consent:
        raise InvalidRequest(
            f"A member under {domain.GUARDIAN_AGE} may only be enrolled with a guardian's consent.",
            errors=[
                {
                    "location": ["body", "guardian_consent"],
                    "message": f"must be true for a member under {domain.GUARDIAN_AGE}",
                    "type": "value_error",
                }
            ],
        )
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
    changes = domain.consent_changes(None, req.consents.model_dump())
    if req.guardian_consent:
        changes.append(("guardian", True))
    await _record_consents(
        uow,
        chain_id=chain_id,
        member_id=member_id,
        changes=changes,
        source=req.consent_source or consent_source,
        policy_version=req.privacy_policy_version,
    )
    data_key = await create_data_key(uow.session, keyring_of(uow), chain_id=chain_id, member_id=member_id)
    sealed = seal_contact(
        data_key, ContactDetails(name=req.name, phone=req.phone, email=req.email), member_id=member_id
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
            consents=req.consents,
            contact=sealed,
        ),
        member_id=member_id,
        chain_id=chain_id,
        time=now,
    )
    return schemas.EnrolResponse(
        member_id=member_id, member_no=member_no, referral_code=code, enrolled_at=enrolled_at or now
    )


async def update_member(
    uow: UnitOfWork, *, chain_id: str, member_id: str, patch: schemas.MemberPatch, consent_source: str = "app"
) -> Row[Any]:
    """Change name, email or consents. Changed consents extend the history; a withdrawn
    ``sensitive_data`` consent strips the treatment details off the member's purchases at once; a
    changed name or email goes on the wire sealed with the member's data key."""
    before = await get_member(uow, chain_id=chain_id, member_id=member_id, lock=True)
    values: dict[str, Any] = patch.model_dump(exclude_unset=True, exclude={"consent_source", "privacy_policy_version"})
    was = Consents(**before.consents)
    # consents not sent keep their answer: a withdrawal is always explicit (it goes into the history)
    consents = was.model_copy(update=patch.consents.model_dump(exclude_unset=True)) if patch.consents else None
    if consents is not None:
        values["consents"] = consents.model_dump()
    if not values:
        raise InvalidRequest("Nothing to change: send name, email or consents.")
    now = uow.now()
    await uow.execute(update(members).where(members.c.member_id == member_id).values(**values, updated_at=now))
    if consents is not None:
        await _record_consents(
            uow,
            chain_id=chain_id,
            member_id=member_id,
            changes=domain.consent_changes(was.model_dump(), consents.model_dump()),
            source=patch.consent_source or consent_source,
            policy_version=patch.privacy_policy_version,
        )
        if was.sensitive_data and not consents.sensitive_data:
            await _strip_treatment_details(uow, member_id=member_id)
    sealed = None
    if patch.name is not None or patch.email is not None:
        data_key = await data_key_of(uow.session, keyring_of(uow), chain_id=chain_id, member_id=member_id)
        if data_key is not None:
            sealed = seal_contact(data_key, ContactDetails(name=patch.name, email=patch.email), member_id=member_id)
    uow.publish(
        MemberUpdated(
            member_id=member_id,
            consents=consents,
            updated_at=now,
            contact=sealed,
            email_removed=patch.removes_email,
        ),
        member_id=member_id,
        chain_id=chain_id,
        time=now,
    )
    return await get_member(uow, chain_id=chain_id, member_id=member_id)


async def _record_consents(
    uow: UnitOfWork,
    *,
    chain_id: str,
    member_id: str,
    changes: list[tuple[str, bool]],
    source: str,
    policy_version: str,
) -> None:
    if not changes:
        return
    at = uow.now()
    await uow.execute(
        consent_records.insert(),
        [
            {
                "member_id": member_id,
                "chain_id": chain_id,
                "purpose": purpose,
                "granted": granted,
                "at": at,
                "source": source,
                "policy_version": policy_version,
            }
            for purpose, granted in changes
        ],
    )


#: the items of a purchase without what was bought (domain.treatment_details without consent), in SQL
_AMOUNTS_ONLY = text(
    "coalesce((SELECT jsonb_agg(jsonb_build_object('amount_fen', i->'amount_fen', 'qty', i->'qty'))"
    " FROM jsonb_array_elements(enrollment.purchases.items) AS i), '[]'::jsonb)"
)


async def _strip_treatment_details(uow: UnitOfWork, *, member_id: str) -> None:
    await uow.execute(update(purchases).where(purchases.c.member_id == member_id).values(items=_AMOUNTS_ONLY))


def consent_source_of(principal: Principal) -> str:
    """Where consents given through this key were given: at a clinic (a POS or clinic-bound key), else the app."""
    return "clinic" if principal.clinic_id is not None or "pos" in principal.scopes else "app"


async def erase_member(uow: UnitOfWork, principal: Principal, *, member_id: str) -> schemas.ErasureAccepted:
    """Erase a member (SPEC §8): their data key is destroyed (whatever was sealed with it, on topics, in
    dead letters, in backups, can no longer be opened), their personal columns are cleared, their
    purchases keep the amounts and lose what was bought, and MemberErased tells the other services to
    do the same with theirs. Financial records stay under the pseudonymous member_id. Audited."""
    chain_id = principal.chain_id
    row = await get_member(uow, chain_id=chain_id, member_id=member_id, lock=True)
    now = uow.now()
    await destroy_data_key(uow.session, chain_id=chain_id, member_id=member_id)
    await uow.execute(
        update(members)
        .where(members.c.member_id == member_id)
        .values(phone=None, name=None, email=None, birthday=None, erased_at=now, updated_at=now)
    )
    await _strip_treatment_details(uow, member_id=member_id)
    await uow.execute(
        update(referrals)
        .where(referrals.c.referee_id == member_id, referrals.c.status == "pending")
        .values(status="cancelled")
    )
    # rows relayed by versions that published contact details in clear: the topics' copies expire with
    # the topics' retention, the outbox's go now (unpublished rows stay: their consumers need them)
    outbox = uow.tables.outbox
    await uow.execute(
        delete(outbox).where(
            outbox.c.key == member_id,
            outbox.c.published_at.is_not(None),
            outbox.c.event_type.in_(["MemberEnrolled", "MemberUpdated"]),
        )
    )
    uow.publish(MemberErased(member_id=member_id, erased_at=now), member_id=member_id, chain_id=chain_id, time=now)
    accepted = schemas.ErasureAccepted(member_id=member_id, erased_at=now)
    await record_audit(
        uow,
        principal,
        action="member.erase",
        target=f"member:{member_id}",
        before={"member_no": row.member_no, "enrolled_at": row.enrolled_at.isoformat()},
        after=accepted,
    )
    return accepted


def _reject_future(uow: UnitOfWork, when: datetime, field: str) -> None:
    if domain.in_the_future(when, uow.now()):
        raise InvalidRequest(
            f"{field} is in the future.",
            errors=[{"location": ["body", field], "message": "must not be in the future", "type": "value_error"}],
        )


async def _member_in_chain(uow: UnitOfWork, *, chain_id: str, member_id: str) -> None:
    found = await uow.session.scalar(
        select(members.c.member_id).where(
            members.c.member_id == member_id, members.c.chain_id == chain_id, members.c.erased_at.is_(None)
        )
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


def purchase_row(
    chain_id: str, req: schemas.PurchaseRequest, purchase_id: str, *, sensitive_consent: bool
) -> dict[str, Any]:
    """The purchases row of a request (its hash tells a retry from a different body under one key); the
    items keep what was bought only with the member's ``sensitive_data`` consent."""
    return {
        "purchase_id": purchase_id,
        "chain_id": chain_id,
        "clinic_id": req.clinic_id,
        "pos_txn_id": req.pos_txn_id,
        "member_id": req.member_id,
        "amount_fen": req.amount_fen,
        "currency": req.currency,
        "occurred_at": req.occurred_at,
        "items": domain.treatment_details([i.model_dump() for i in req.items], sensitive_consent=sensitive_consent),
        "request_hash": request_hash(req.model_dump(mode="json")),
    }


@functools.cache
def _record_purchase_statement(schema: str) -> TextClause:
    """Insert a purchase if its member is in the chain (not erased) and its (clinic, pos_txn_id) is new,
    keeping what was bought only with the member's ``sensitive_data`` consent, and, in the same
    statement, its PurchaseRecorded outbox row if (and only if) it was inserted. Plain SQL built once:
    the purchase path runs it hundreds of times a second, and a Core expression costs more to build
    and key for the compiled cache than the statement costs the database (docs/decisions/0048)."""
    return text(
        f"""
        WITH recorded AS (
            INSERT INTO {schema}.purchases
                (purchase_id, chain_id, clinic_id, pos_txn_id, member_id, amount_fen, currency, occurred_at,
                 request_hash, items)
            SELECT :purchase_id, :chain_id, :clinic_id, :pos_txn_id, :member_id, :amount_fen, :currency,
                   :occurred_at, :request_hash,
                   CASE WHEN (m.consents ->> 'sensitive_data')::boolean THEN :items ELSE :redacted_items END
            FROM {schema}.members AS m
            WHERE m.member_id = :member_id AND m.chain_id = :chain_id AND m.erased_at IS NULL
            ON CONFLICT DO NOTHING
            RETURNING purchase_id),
        published AS (
            INSERT INTO {schema}.outbox (event_id, event_type, topic, key, shard, payload)
            SELECT :outbox_event_id, :outbox_event_type, :outbox_topic, :outbox_key, :outbox_shard,
                   :outbox_payload
            FROM recorded)
        SELECT purchase_id FROM recorded
        """
    ).bindparams(
        bindparam("items", type_=JSONB),
        bindparam("redacted_items", type_=JSONB),
        bindparam("occurred_at", type_=DateTime(timezone=True)),
        bindparam("amount_fen", type_=BigInteger),
        bindparam("outbox_shard", type_=SmallInteger),
    )


def purchase_recorded(req: schemas.PurchaseRequest, purchase_id: str) -> PurchaseRecorded:
    """The event of a recorded purchase. The items stay in enrollment: no consumer uses them, and what
    was bought is sensitive personal information (SPEC §8)."""
    return PurchaseRecorded(
        purchase_id=purchase_id,
        pos_txn_id=req.pos_txn_id,
        clinic_id=req.clinic_id,
        member_id=req.member_id,
        amount_fen=req.amount_fen,
        occurred_at=req.occurred_at,
    )


async def record_purchase(
    uow: UnitOfWork, *, chain_id: str, req: schemas.PurchaseRequest
) -> tuple[bool, schemas.PurchaseAccepted]:
    """Record a POS purchase once per (clinic, pos_txn_id). Returns (created, response).

    The common case is one statement: insert the purchase and its PurchaseRecorded outbox row if its
    member is in the chain (and not erased) and the (clinic, pos_txn_id) is new, keeping what was
    bought only with the member's ``sensitive_data`` consent. Only when nothing was inserted does a
    second read tell a retry (same body: the recorded purchase; another body: 409) from an unknown
    member (422)."""
    _reject_future(uow, req.occurred_at, "occurred_at")
    refused = await implausible_amount(uow, chain_id=chain_id, amount_fen=req.amount_fen)
    if refused is not None:
        raise refused
    purchase_id = str(uuid.uuid4())
    row = purchase_row(chain_id, req, purchase_id, sensitive_consent=True)
    digest = row["request_hash"]
    # the purchase and its outbox row in ONE statement (the event is written only if the purchase was)
    event = uow.event(purchase_recorded(req, purchase_id), member_id=req.member_id, chain_id=chain_id)
    inserted = (
        await uow.execute(
            _record_purchase_statement(str(uow.tables.outbox.schema)),
            {
                **row,
                "redacted_items": domain.treatment_details(row["items"], sensitive_consent=False),
                **{f"outbox_{k}": v for k, v in uow.outbox_row(event).items()},
            },
        )
    ).first()
    if inserted is not None:
        uow.written(event)
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

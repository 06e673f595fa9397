"""Enrollment's reads for the API: profiles, the phone lookup, the member status view.

Every function takes the unit of work first and keyword-only data; it raises
``shared.problems`` errors, never HTTP ones.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select

from shared.db import UnitOfWork
from shared.events import Consents
from shared.observability import mask_phone
from shared.problems import Gone, NotFound

from . import domain, schemas
from .store import stored_status
from .tables import consent_records, member_status, members, referrals


def profile(row: Row[Any], *, reveal_phone: bool, referral_status: str | None = None) -> schemas.MemberProfile:
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
        consents=Consents(**(row.consents or {})),  # JSON null in rows an earlier bug wrote: no consent
        email=row.email,
        enrolled_at=row.enrolled_at,
        referrals_completed=row.referrals_completed,
        referral_status=referral_status,
    )


async def referral_status_of(uow: UnitOfWork, *, member_id: str) -> str | None:
    status: str | None = await uow.session.scalar(select(referrals.c.status).where(referrals.c.referee_id == member_id))
    return status


async def get_member(uow: UnitOfWork, *, chain_id: str, member_id: str, lock: bool = False) -> Row[Any]:
    """The member's row; 404 for no such member in the chain, 410 for an erased one."""
    stmt = select(members).where(members.c.member_id == member_id, members.c.chain_id == chain_id)
    row: Row[Any] | None = (await uow.execute(stmt.with_for_update() if lock else stmt)).first()
    if row is None:
        raise NotFound("No such member.")
    if row.erased_at is not None:
        raise Gone("This member was erased.", member_id=member_id, erased_at=row.erased_at.isoformat())
    return row


async def consents_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.ConsentHistory:
    """The member's current consents and their history, oldest first."""
    row = await get_member(uow, chain_id=chain_id, member_id=member_id)
    records = (
        await uow.execute(
            select(consent_records)
            .where(consent_records.c.member_id == member_id, consent_records.c.chain_id == chain_id)
            .order_by(consent_records.c.seq)
        )
    ).all()
    return schemas.ConsentHistory(
        member_id=member_id,
        consents=Consents(**row.consents),
        items=[
            schemas.ConsentRecord(
                purpose=r.purpose, granted=r.granted, at=r.at, source=r.source, policy_version=r.policy_version
            )
            for r in records
        ],
    )


async def find_by_phone(uow: UnitOfWork, *, chain_id: str, phone: str) -> list[Row[Any]]:
    return list(
        (await uow.execute(select(members).where(members.c.chain_id == chain_id, members.c.phone == phone))).all()
    )


async def member_status_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.MemberStatus:
    """The status view of a member: one indexed read (the member's row joined to its view row)."""
    v = member_status
    row = (
        await uow.execute(
            select(members.c.enrolled_at, members.c.erased_at, v.c.tier, v.c.progress, v.c.points, v.c.benefits)
            .add_columns(v.c.updated_at, v.c.member_id.label("has_view"))
            .select_from(members.outerjoin(v, v.c.member_id == members.c.member_id))
            .where(members.c.member_id == member_id, members.c.chain_id == chain_id)
        )
    ).first()
    if row is None:
        raise NotFound("No such member.")
    if row.erased_at is not None:
        raise Gone("This member was erased.", member_id=member_id, erased_at=row.erased_at.isoformat())
    member = row
    stored = stored_status(row) if row.has_view is not None else None
    view = domain.status_as_of(stored.document if stored else None, enrolled_at=member.enrolled_at, now=uow.now())
    progress, points = view.progress, view.points
    return schemas.MemberStatus(
        member_id=member_id,
        tier=schemas.TierView(**view.tier),
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
            expiring=[schemas.ExpiringView(**e) for e in view.expiring],
        ),
        benefits=[schemas.BenefitView(**b) for b in view.benefits],
        as_of=stored.updated_at if stored else member.enrolled_at,
    )

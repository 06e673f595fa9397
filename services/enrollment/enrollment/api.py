"""Enrollment's HTTP API: thin routes over ``commands``, ``queries`` and ``jobs``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from shared.api import (
    AppKey,
    CtxDep,
    IdempotencyKey,
    OpsKey,
    PosKey,
    PosOrApp,
    current_correlation_id,
    idempotent_command,
    job_as_of,
)
from shared.audit import record_audit
from shared.db import UnitOfWork
from shared.platform import Principal
from shared.problems import Forbidden, InvalidRequest
from shared.service import JobRun

from . import commands, imports, jobs, queries, schemas

router = APIRouter(prefix="/v1", tags=["enrollment"])


@router.post("/members", status_code=201, response_model=schemas.EnrolResponse)
async def enrol_member(
    body: schemas.EnrolRequest, ctx: CtxDep, principal: AppKey, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Enrol a member; 409 with the existing member_id when the phone is already enrolled."""
    return await idempotent_command(
        ctx,
        principal,
        scope="POST /v1/members",
        key=idempotency_key,
        body=body,
        status=201,
        run=lambda uow: commands.enrol(
            uow, chain_id=principal.chain_id, req=body, consent_source=commands.consent_source_of(principal)
        ),
    )


@router.get("/members", response_model=schemas.MemberList)
async def find_members(
    ctx: CtxDep, principal: PosOrApp, phone: Annotated[str, Query(min_length=6, max_length=32)]
) -> schemas.MemberList:
    """Look a member up by phone (POS), in any written form; limited per key more strictly than other calls
    (a masked phone must not be recoverable by trying its hidden digits)."""
    s = ctx.settings
    ctx.throttle(
        "phone-lookups", principal, rate=s.phone_lookup_per_second, burst=s.phone_lookup_burst, what="phone lookups"
    )
    try:
        normalized = schemas.normalize_phone(phone)
    except ValueError as exc:
        raise InvalidRequest(
            str(exc), errors=[{"location": ["query", "phone"], "message": str(exc), "type": "value_error"}]
        ) from exc
    async with ctx.db.unit_of_work() as uow:
        rows = await queries.find_by_phone(uow, chain_id=principal.chain_id, phone=normalized)
        return schemas.MemberList(items=[queries.profile(r, reveal_phone=principal.is_ops) for r in rows])


@router.get("/members/{member_id}", response_model=schemas.MemberProfile)
async def get_member(member_id: str, ctx: CtxDep, principal: PosOrApp) -> schemas.MemberProfile:
    """A member's profile; the phone is masked unless the key has ops."""
    async with ctx.db.unit_of_work() as uow:
        row = await queries.get_member(uow, chain_id=principal.chain_id, member_id=member_id)
        status = await queries.referral_status_of(uow, member_id=member_id)
    return queries.profile(row, reveal_phone=principal.is_ops, referral_status=status)


@router.patch("/members/{member_id}", response_model=schemas.MemberProfile)
async def patch_member(
    member_id: str, body: schemas.MemberPatch, ctx: CtxDep, principal: AppKey
) -> schemas.MemberProfile:
    """Change name, email or consents."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        row = await commands.update_member(
            uow,
            chain_id=principal.chain_id,
            member_id=member_id,
            patch=body,
            consent_source=commands.consent_source_of(principal),
        )
        # the answer is built before the commit: if it fails, the change rolls back with it
        return queries.profile(row, reveal_phone=principal.is_ops)


@router.get("/members/{member_id}/consents", response_model=schemas.ConsentHistory)
async def member_consents(member_id: str, ctx: CtxDep, principal: PosOrApp) -> schemas.ConsentHistory:
    """The member's consents and their history (purpose, granted or withdrawn, when, where, policy version)."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.consents_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.delete("/members/{member_id}", status_code=202, response_model=schemas.ErasureAccepted)
async def erase_member(member_id: str, ctx: CtxDep, principal: OpsKey) -> schemas.ErasureAccepted:
    """Erase a member (SPEC §8): personal data deleted or anonymised on every service, the data key
    destroyed; financial records stay under the member_id. 410 when already erased."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        return await commands.erase_member(uow, principal, member_id=member_id)


@router.get("/members/{member_id}/status", response_model=schemas.MemberStatus)
async def member_status(member_id: str, ctx: CtxDep, principal: PosOrApp) -> schemas.MemberStatus:
    """Tier, progress, points and benefits, built from events (eventually consistent)."""
    async with ctx.db.reading() as uow:  # one query, no transaction around it
        return await queries.member_status_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.post(
    "/purchases",
    status_code=202,
    response_model=schemas.PurchaseAccepted,
    responses={200: {"model": schemas.PurchaseAccepted, "description": "a repeat of a recorded purchase"}},
)
async def record_purchase(
    body: schemas.PurchaseRequest, ctx: CtxDep, principal: PosKey, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Record a purchase; idempotent on (clinic_id, pos_txn_id). A key bound to a clinic records that
    clinic's purchases only (403)."""
    _for_clinic(principal, body.clinic_id)

    async def run(uow: UnitOfWork) -> tuple[int, schemas.PurchaseAccepted]:
        created, accepted = await commands.record_purchase(uow, chain_id=principal.chain_id, req=body)
        return (202 if created else 200), accepted

    return await idempotent_command(ctx, principal, scope="POST /v1/purchases", key=idempotency_key, body=body, run=run)


@router.post("/activities", status_code=202, response_model=schemas.ActivityAccepted)
async def record_activity(
    body: schemas.ActivityRequest, ctx: CtxDep, principal: PosKey, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Record an attended activity (lecture, survey, skin test...); idempotent on activity_id."""
    _for_clinic(principal, body.clinic_id)

    async def run(uow: UnitOfWork) -> tuple[int, schemas.ActivityAccepted]:
        created, accepted = await commands.record_activity(uow, chain_id=principal.chain_id, req=body)
        return (202 if created else 200), accepted

    return await idempotent_command(
        ctx, principal, scope="POST /v1/activities", key=idempotency_key, body=body, run=run
    )


@router.post(
    "/purchases/{purchase_id}/refunds",
    status_code=202,
    response_model=schemas.RefundAccepted,
    responses={200: {"model": schemas.RefundAccepted, "description": "a repeat of a recorded refund"}},
)
async def refund_purchase(
    purchase_id: str,
    body: schemas.RefundRequest,
    ctx: CtxDep,
    principal: PosKey,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Refund part or all of a purchase; idempotent on refund_id; never beyond what remains."""

    async def run(uow: UnitOfWork) -> tuple[int, schemas.RefundAccepted]:
        created, accepted = await commands.record_refund(
            uow, chain_id=principal.chain_id, purchase_id=purchase_id, req=body, clinic_id=principal.clinic_id
        )
        return (202 if created else 200), accepted

    return await idempotent_command(
        ctx,
        principal,
        scope=f"POST /v1/purchases/{purchase_id}/refunds",
        key=idempotency_key,
        body=body,
        run=run,
    )


@router.post("/referrals/run", response_model=schemas.ReferralRun, tags=["operations"])
async def run_referrals(ctx: CtxDep, principal: OpsKey, body: schemas.RunRequest | None = None) -> schemas.ReferralRun:
    """Complete the caller's chain's referrals that are due as of ``as_of`` (default now); the schedule
    runs the same job for every chain."""
    as_of = job_as_of(ctx, body.as_of if body else None)
    completed = await jobs.complete_referrals(ctx, JobRun(as_of=as_of, chain_ids=(principal.chain_id,)))
    result = schemas.ReferralRun(completed=completed, as_of=as_of)
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        await record_audit(uow, principal, action="referrals.run", target=f"chain:{principal.chain_id}", after=result)
    return result


def _for_clinic(principal: Principal, clinic_id: str) -> None:
    if not principal.may_act_for_clinic(clinic_id):
        raise Forbidden("This key is bound to another clinic.")


@router.post("/members/batch", response_model=schemas.BatchResult, tags=["operations"])
async def import_members(body: schemas.BatchRequest, ctx: CtxDep, principal: OpsKey) -> schemas.BatchResult:
    """Enrol up to 1,000 members of an imported history in one transaction; each item is created, exists
    (same member_id or phone) or rejected with its problem. Nobody is notified of an import."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        result = await imports.import_members(uow, chain_id=principal.chain_id, items=body.items)
        await _audit_import(uow, principal, "import.members", result)
    return result


@router.post("/purchases/batch", response_model=schemas.BatchResult, tags=["operations"])
async def import_purchases(body: schemas.BatchRequest, ctx: CtxDep, principal: OpsKey) -> schemas.BatchResult:
    """Record up to 1,000 past purchases in one transaction, as POST /v1/purchases does each (occurred_at
    may be years back: points, tiers and benefits land where they belong); nobody is notified."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        result = await imports.import_purchases(uow, chain_id=principal.chain_id, items=body.items)
        await _audit_import(uow, principal, "import.purchases", result)
    return result


async def _audit_import(uow: UnitOfWork, principal: Principal, action: str, result: schemas.BatchResult) -> None:
    ids = [r.id for r in result.items if r.status == "created" and r.id]
    await record_audit(
        uow,
        principal,
        action=action,
        target=f"batch:{ids[0]}..{ids[-1]}" if ids else "batch:-",
        after={"created": result.created, "exists": result.exists, "rejected": result.rejected},
    )

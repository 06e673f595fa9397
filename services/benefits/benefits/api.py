"""Benefits' HTTP API: thin routes over ``queries``, ``commands`` and ``jobs``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from shared.api import (
    CtxDep,
    IdempotencyKey,
    OpsKey,
    PosOrApp,
    current_correlation_id,
    idempotent_command,
    job_as_of,
)
from shared.audit import record_audit
from shared.service import JobRun
from shared.snapshots import snapshot_router

from . import commands, jobs, queries, schemas
from .domain import Status

router = APIRouter(prefix="/v1", tags=["benefits"])
#: POST /v1/ops/snapshots: a page of members' BenefitsSnapshot, to rebuild the status view (ops)
snapshots_router = snapshot_router(commands.publish_snapshots, event_type="BenefitsSnapshot")


@router.get("/members/{member_id}/benefits", response_model=schemas.BenefitList)
async def list_benefits(
    member_id: str, ctx: CtxDep, principal: PosOrApp, status: Annotated[Status | None, Query()] = None
) -> schemas.BenefitList:
    """A member's entitlements, optionally only those of one status (e.g. ?status=active)."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.benefits_of(uow, chain_id=principal.chain_id, member_id=member_id, status=status)


@router.get("/members/{member_id}/discount", response_model=schemas.Discount)
async def member_discount(member_id: str, ctx: CtxDep, principal: PosOrApp) -> schemas.Discount:
    """The percent of the price the member pays at their current tier."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.discount_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.post(
    "/members/{member_id}/benefits/{benefit_id}/redemptions", status_code=201, response_model=schemas.Redemption
)
async def redeem_benefit(
    member_id: str,
    benefit_id: str,
    body: schemas.RedemptionRequest,
    ctx: CtxDep,
    principal: PosOrApp,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Use a benefit once at a clinic; 409 when it is used up, expired or revoked."""
    # the path is part of the request: the same key for another benefit is a different body (409)
    return await idempotent_command(
        ctx,
        principal,
        scope="POST /v1/members/{member_id}/benefits/{benefit_id}/redemptions",
        key=idempotency_key,
        body={"member_id": member_id, "benefit_id": benefit_id, **body.model_dump(mode="json")},
        status=201,
        run=lambda uow: commands.redeem(
            uow, chain_id=principal.chain_id, member_id=member_id, benefit_id=benefit_id, clinic_id=body.clinic_id
        ),
    )


@router.post("/benefits/schedules/run", response_model=schemas.BirthdayRun, tags=["operations"])
async def run_schedules(ctx: CtxDep, principal: OpsKey, body: schemas.RunRequest | None = None) -> schemas.BirthdayRun:
    """Grant the key's chain's birthday vouchers due as of ``as_of`` (default now); also runs on a schedule."""
    run = JobRun(as_of=job_as_of(ctx, body.as_of if body else None), chain_ids=(principal.chain_id,))
    granted = await jobs.grant_birthday_vouchers(ctx, run)
    result = schemas.BirthdayRun(granted=granted, as_of=run.as_of)
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        await record_audit(uow, principal, action="schedules.run", target=f"chain:{principal.chain_id}", after=result)
    return result

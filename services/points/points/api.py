"""Points' HTTP API: thin routes over ``commands``, ``queries`` and ``jobs``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from shared.api import (
    AppKey,
    CtxDep,
    IdempotencyKey,
    OpsKey,
    PosOrApp,
    current_correlation_id,
    idempotent_command,
    job_as_of,
)
from shared.audit import record_audit
from shared.db import UnitOfWork
from shared.service import JobRun
from shared.snapshots import snapshot_router

from . import commands, jobs, queries, schemas

router = APIRouter(prefix="/v1/members/{member_id}/points", tags=["points"])
ops_router = APIRouter(prefix="/v1/points", tags=["operations"])
#: POST /v1/ops/snapshots: a page of members' PointsSnapshot, to rebuild the status view (ops)
snapshots_router = snapshot_router(commands.publish_snapshots, event_type="PointsSnapshot")


@router.get("", response_model=schemas.PointsSummary)
async def points(member_id: str, ctx: CtxDep, principal: PosOrApp) -> schemas.PointsSummary:
    """The member's balance, available, pending and expiring points, and the lots holding them.

    Authoritative and as of now: pending points become available when their return window
    passes, with no event. The enrollment status view's available/pending are copies taken
    from the member's last PointsChanged, so they are as of the member's last points change.
    """
    async with ctx.db.unit_of_work() as uow:
        return await queries.points_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.get("/ledger", response_model=schemas.LedgerPage)
async def ledger(
    member_id: str,
    ctx: CtxDep,
    principal: PosOrApp,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> schemas.LedgerPage:
    """The member's ledger entries, newest first, a page at a time."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.ledger_of(
            uow, chain_id=principal.chain_id, member_id=member_id, cursor=cursor, limit=limit
        )


@router.post("/redemptions", status_code=201, response_model=schemas.PostedRedemption)
async def redeem(
    member_id: str,
    body: schemas.RedemptionRequest,
    ctx: CtxDep,
    principal: AppKey,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Redeem available points (soonest-expiring lots first); 409 when short or the balance is negative."""
    # the member is part of the request: one key reused for another member is a conflict, not a replay
    return await idempotent_command(
        ctx,
        principal,
        scope="POST /v1/members/{member_id}/points/redemptions",
        key=idempotency_key,
        body={"member_id": member_id, **body.model_dump(mode="json")},
        status=201,
        run=lambda uow: commands.redeem(uow, chain_id=principal.chain_id, member_id=member_id, req=body),
    )


@router.post("/adjustments", status_code=201, response_model=schemas.PostedEntry)
async def adjust(
    member_id: str,
    body: schemas.AdjustmentRequest,
    ctx: CtxDep,
    principal: OpsKey,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Correct a member's points (ops): a credit is available at once, a debit may leave the balance negative."""

    async def run(uow: UnitOfWork) -> schemas.PostedEntry:
        posted = await commands.adjust(uow, chain_id=principal.chain_id, member_id=member_id, req=body)
        await record_audit(
            uow,
            principal,
            action="points.adjust",
            target=f"member:{member_id}",
            before={"balance": posted.balance - body.delta},
            after={"balance": posted.balance, "delta": body.delta, "reason": body.reason, "entry_id": posted.entry_id},
        )
        return posted

    return await idempotent_command(
        ctx,
        principal,
        scope="POST /v1/members/{member_id}/points/adjustments",
        key=idempotency_key,
        body={"member_id": member_id, **body.model_dump(mode="json")},
        status=201,
        run=run,
    )


@ops_router.post("/expiry/run", response_model=schemas.ExpiryRunResult)
async def run_expiry(
    ctx: CtxDep, principal: OpsKey, body: schemas.ExpiryRunRequest | None = None
) -> schemas.ExpiryRunResult:
    """Run the expiry pass for the key's chain as of ``as_of`` (default now): announce, then expire (ops)."""
    as_of = job_as_of(ctx, body.as_of if body else None)
    run = await jobs.expire_points(ctx, JobRun(as_of=as_of, chain_ids=(principal.chain_id,)))
    result = schemas.ExpiryRunResult(
        warned=run.warned, expired=run.expired, expired_points=run.expired_points, as_of=run.as_of
    )
    # the job commits a batch at a time; its audit entry records the whole run once it is done
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        await record_audit(uow, principal, action="expiry.run", target=f"chain:{principal.chain_id}", after=result)
    return result


@ops_router.get("/policy", response_model=schemas.PolicyView)
async def policy(ctx: CtxDep, principal: OpsKey) -> schemas.PolicyView:
    """The programme version points applies to the key's chain now (ops)."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.policy_view(uow, chain_id=principal.chain_id)

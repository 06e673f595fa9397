"""Tiering's HTTP API: thin routes over ``queries`` (reads), ``commands`` (writes) and ``jobs`` (a
review run on demand)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
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
from shared.db import UnitOfWork
from shared.schemas import Instant
from shared.service import JobRun
from shared.snapshots import snapshot_router

from . import commands, jobs, queries, schemas
from .policies import POLICIES

router = APIRouter(prefix="/v1", tags=["tiering"])
#: POST /v1/ops/snapshots: a page of members' TierSnapshot, to rebuild the status view (ops)
snapshots_router = snapshot_router(commands.publish_snapshots, event_type="TierSnapshot")


@router.get("/members/{member_id}/tier", response_model=schemas.MemberTier)
async def member_tier(member_id: str, ctx: CtxDep, principal: PosOrApp) -> schemas.MemberTier:
    """The member's tier, its review date and progress towards the next tier."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.member_tier(uow, chain_id=principal.chain_id, member_id=member_id)


@router.get("/members/{member_id}/tier/history", response_model=schemas.TierHistory)
async def member_tier_history(member_id: str, ctx: CtxDep, principal: PosOrApp) -> schemas.TierHistory:
    """The member's tier changes, oldest first."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.member_tier_history(uow, chain_id=principal.chain_id, member_id=member_id)


@router.get("/members/{member_id}/tier/explain", response_model=schemas.TierExplanation)
async def explain_member_tier(
    member_id: str, ctx: CtxDep, principal: PosOrApp, as_of: Annotated[Instant | None, Query()] = None
) -> schemas.TierExplanation:
    """Why the member held their tier at ``as_of`` (default now): policy, thresholds, evidence, last change."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.explain_tier(
            uow, chain_id=principal.chain_id, member_id=member_id, as_of=as_of or uow.now()
        )


@router.post("/members/{member_id}/tier/override", response_model=schemas.MemberTier, tags=["operations"])
async def override_member_tier(
    member_id: str,
    body: schemas.OverrideRequest,
    ctx: CtxDep,
    principal: OpsKey,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Set the member's tier at once, held as a floor until ``until`` (default: their next review)."""

    async def run(uow: UnitOfWork) -> schemas.MemberTier:
        before = await queries.member_tier(uow, chain_id=principal.chain_id, member_id=member_id)
        after = await commands.override_tier(uow, chain_id=principal.chain_id, member_id=member_id, req=body)
        await record_audit(
            uow,
            principal,
            action="tier.override",
            target=f"member:{member_id}",
            before={"tier": before.code},
            after={"tier": after.code, "reason": body.reason, "until": body.until},
        )
        return after

    return await idempotent_command(
        ctx,
        principal,
        scope=f"POST /v1/members/{member_id}/tier/override",
        key=idempotency_key,
        body=body,
        status=200,
        run=run,
    )


@router.post("/reviews/run", response_model=schemas.ReviewRun, tags=["operations"])
async def run_reviews(
    ctx: CtxDep, principal: OpsKey, body: schemas.ReviewRunRequest | None = None
) -> schemas.ReviewRun:
    """Run the chain's reviews due as of ``as_of`` (default now); they also run on a schedule."""
    run = JobRun(as_of=job_as_of(ctx, body.as_of if body else None), chain_ids=(principal.chain_id,))
    tally = await jobs.tier_reviews(ctx, run)
    result = schemas.ReviewRun(
        reviewed=tally.reviewed,
        moved_up=tally.moved_up,
        moved_down=tally.moved_down,
        unchanged=tally.unchanged,
        as_of=run.as_of,
    )
    # reviews commit a batch at a time: the run's audit entry is written once it is done
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        await record_audit(uow, principal, action="reviews.run", target=f"chain:{principal.chain_id}", after=result)
    return result


@router.get("/policy", response_model=schemas.PolicyDocument)
async def get_policy(ctx: CtxDep, principal: OpsKey) -> schemas.PolicyDocument:
    """The chain's current tier policy, with its version."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.policy(uow, chain_id=principal.chain_id)


@router.get("/policy/versions/{version}", response_model=schemas.PolicyDocument)
async def get_policy_version(
    version: Annotated[int, Path(ge=1, le=2**31 - 1)], ctx: CtxDep, principal: OpsKey
) -> schemas.PolicyDocument:
    """One stored version of the chain's policy."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.policy_version(uow, chain_id=principal.chain_id, version=version)


@router.put("/policy", response_model=schemas.PolicyDocument)
async def put_policy(body: schemas.PolicyDocument, ctx: CtxDep, principal: OpsKey) -> schemas.PolicyDocument:
    """Validate the policy and store it as the chain's next version (the body's version is ignored);
    publishes PolicyChanged. Nobody moves until a review or a recalculation."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        before = await queries.policy(uow, chain_id=principal.chain_id)
        stored = await commands.change_policy(uow, chain_id=principal.chain_id, policy=body)
        await record_audit(
            uow, principal, action="policy.update", target=f"policy:v{stored.version}", before=before, after=stored
        )
    POLICIES.remember(principal.chain_id, stored)  # committed: this process reads it at once
    return stored


@router.post("/policy/simulate", response_model=schemas.Simulation, tags=["operations"])
async def simulate_policy(body: schemas.SimulateRequest, ctx: CtxDep, principal: OpsKey) -> schemas.Simulation:
    """How the chain's members would sort into tiers under a proposed policy; changes nothing."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.simulate(uow, chain_id=principal.chain_id, proposal=body.policy)


@router.post("/policy/recalculate", status_code=202, response_model=schemas.RecalculationStarted, tags=["operations"])
async def recalculate(ctx: CtxDep, principal: OpsKey, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Start re-evaluating every member of the chain under the current policy version (a background job)."""

    async def run(uow: UnitOfWork) -> schemas.RecalculationStarted:
        started = await commands.start_recalculation(uow, chain_id=principal.chain_id)
        await record_audit(
            uow, principal, action="policy.recalculate", target=f"recalculation:{started.job_id}", after=started
        )
        return started

    return await idempotent_command(
        ctx,
        principal,
        scope="POST /v1/policy/recalculate",
        key=idempotency_key,
        body={},
        status=202,
        run=run,
    )


@router.get("/policy/recalculations/{job_id}", response_model=schemas.Recalculation, tags=["operations"])
async def recalculation_progress(job_id: str, ctx: CtxDep, principal: OpsKey) -> schemas.Recalculation:
    """A recalculation's progress: status, total, processed, moved."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.recalculation(uow, chain_id=principal.chain_id, job_id=job_id)

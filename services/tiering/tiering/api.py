"""Tiering's HTTP API: thin routes over ``handlers``, ``policies``, ``reviews``, ``recalculation``
and ``simulation``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime

from shared.api import CtxDep, IdempotencyKey, current_correlation_id, idempotent, require
from shared.platform import Principal

from . import handlers, policies, recalculation, reviews, schemas, simulation

router = APIRouter(prefix="/v1", tags=["tiering"])

OpsKey = Annotated[Principal, Depends(require("ops"))]
AnyKey = Annotated[Principal, Depends(require("pos", "app"))]


@router.get("/members/{member_id}/tier", response_model=schemas.MemberTier)
async def member_tier(member_id: str, ctx: CtxDep, principal: AnyKey) -> schemas.MemberTier:
    """The member's tier, its review date and progress towards the next tier."""
    async with ctx.db.unit_of_work() as uow:
        return await handlers.member_tier(uow, chain_id=principal.chain_id, member_id=member_id)


@router.get("/members/{member_id}/tier/history", response_model=schemas.TierHistory)
async def member_tier_history(member_id: str, ctx: CtxDep, principal: AnyKey) -> schemas.TierHistory:
    """The member's tier changes, oldest first."""
    async with ctx.db.unit_of_work() as uow:
        return await handlers.member_tier_history(uow, chain_id=principal.chain_id, member_id=member_id)


@router.get("/members/{member_id}/tier/explain", response_model=schemas.TierExplanation)
async def explain_member_tier(
    member_id: str, ctx: CtxDep, principal: AnyKey, as_of: Annotated[AwareDatetime | None, Query()] = None
) -> schemas.TierExplanation:
    """Why the member held their tier at ``as_of`` (default now): policy, thresholds, evidence, last change."""
    async with ctx.db.unit_of_work() as uow:
        return await handlers.explain_tier(
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
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:

        async def action() -> tuple[int, dict]:
            view = await handlers.override_tier(uow, chain_id=principal.chain_id, member_id=member_id, req=body)
            return 200, view.model_dump(mode="json")

        return await idempotent(
            uow,
            principal,
            scope=f"POST /v1/members/{member_id}/tier/override",
            key=idempotency_key,
            body=body.model_dump(mode="json"),
            action=action,
        )


@router.post("/reviews/run", response_model=schemas.ReviewRun, tags=["operations"])
async def run_reviews(
    ctx: CtxDep, principal: OpsKey, body: schemas.ReviewRunRequest | None = None
) -> schemas.ReviewRun:
    """Run the chain's reviews due as of ``as_of`` (default now); they also run on a schedule."""
    as_of, tally = await reviews.run_due_reviews(
        ctx.db, as_of=body.as_of if body else None, chain_id=principal.chain_id, correlation_id=current_correlation_id()
    )
    return schemas.ReviewRun(
        reviewed=tally.reviewed,
        moved_up=tally.moved_up,
        moved_down=tally.moved_down,
        unchanged=tally.unchanged,
        as_of=as_of,
    )


@router.get("/policy", response_model=schemas.PolicyDocument)
async def get_policy(ctx: CtxDep, principal: OpsKey) -> schemas.PolicyDocument:
    """The chain's current tier policy, with its version."""
    async with ctx.db.unit_of_work() as uow:
        return await policies.current_policy(uow, chain_id=principal.chain_id)


@router.get("/policy/versions/{version}", response_model=schemas.PolicyDocument)
async def get_policy_version(version: int, ctx: CtxDep, principal: OpsKey) -> schemas.PolicyDocument:
    """One stored version of the chain's policy."""
    async with ctx.db.unit_of_work() as uow:
        return await policies.policy_version(uow, chain_id=principal.chain_id, version=version)


@router.put("/policy", response_model=schemas.PolicyDocument)
async def put_policy(body: schemas.PolicyDocument, ctx: CtxDep, principal: OpsKey) -> schemas.PolicyDocument:
    """Validate the policy and store it as the chain's next version (the body's version is ignored);
    publishes PolicyChanged. Nobody moves until a review or a recalculation."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        stored = await policies.store_policy(uow, chain_id=principal.chain_id, policy=body)
    policies.POLICIES.remember(principal.chain_id, stored)  # committed: this process reads it at once
    return stored


@router.post("/policy/simulate", response_model=schemas.Simulation, tags=["operations"])
async def simulate_policy(body: schemas.SimulateRequest, ctx: CtxDep, principal: OpsKey) -> schemas.Simulation:
    """How the chain's members would sort into tiers under a proposed policy; changes nothing."""
    async with ctx.db.unit_of_work() as uow:
        return await simulation.simulate(uow, chain_id=principal.chain_id, proposal=body.policy)


@router.post("/policy/recalculate", status_code=202, response_model=schemas.RecalculationStarted, tags=["operations"])
async def recalculate(ctx: CtxDep, principal: OpsKey, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Start re-evaluating every member of the chain under the current policy version (a background job)."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:

        async def action() -> tuple[int, dict]:
            started = await recalculation.start_recalculation(uow, chain_id=principal.chain_id)
            return 202, started.model_dump(mode="json")

        return await idempotent(
            uow, principal, scope="POST /v1/policy/recalculate", key=idempotency_key, body={}, action=action
        )


@router.get("/policy/recalculations/{job_id}", response_model=schemas.Recalculation, tags=["operations"])
async def recalculation_progress(job_id: str, ctx: CtxDep, principal: OpsKey) -> schemas.Recalculation:
    """A recalculation's progress: status, total, processed, moved."""
    async with ctx.db.unit_of_work() as uow:
        return await recalculation.recalculation(uow, chain_id=principal.chain_id, job_id=job_id)

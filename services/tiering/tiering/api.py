"""Tiering's HTTP API: thin routes over ``handlers`` and ``policies``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from shared.api import CtxDep, current_correlation_id, require
from shared.platform import Principal

from . import handlers, policies, schemas

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


@router.get("/policy", response_model=schemas.PolicyDocument)
async def get_policy(ctx: CtxDep, principal: OpsKey) -> schemas.PolicyDocument:
    """The chain's current tier policy, with its version."""
    async with ctx.db.unit_of_work() as uow:
        return await policies.current_policy(uow, chain_id=principal.chain_id)


@router.put("/policy", response_model=schemas.PolicyDocument)
async def put_policy(body: schemas.PolicyDocument, ctx: CtxDep, principal: OpsKey) -> schemas.PolicyDocument:
    """Validate the policy and store it as the chain's next version (the body's version is ignored)."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        stored = await policies.store_policy(uow, chain_id=principal.chain_id, policy=body)
    policies.POLICIES.remember(principal.chain_id, stored)  # committed: this process reads it at once
    return stored

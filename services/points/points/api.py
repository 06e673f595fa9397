"""Points' HTTP API: thin routes over ``handlers``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from shared.api import CtxDep, IdempotencyKey, current_correlation_id, idempotent, require
from shared.platform import Principal

from . import handlers, schemas

router = APIRouter(prefix="/v1/members/{member_id}/points", tags=["points"])

Reader = Annotated[Principal, Depends(require("pos", "app"))]
AppKey = Annotated[Principal, Depends(require("app"))]
OpsKey = Annotated[Principal, Depends(require("ops"))]


@router.get("", response_model=schemas.PointsSummary)
async def points(member_id: str, ctx: CtxDep, principal: Reader) -> schemas.PointsSummary:
    """The member's balance, available and pending points, and the lots holding them (oldest first)."""
    async with ctx.db.unit_of_work() as uow:
        return await handlers.points_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.get("/ledger", response_model=schemas.LedgerPage)
async def ledger(member_id: str, ctx: CtxDep, principal: Reader,
                 cursor: Annotated[str | None, Query(max_length=200)] = None,
                 limit: Annotated[int, Query(ge=1, le=200)] = 50) -> schemas.LedgerPage:
    """The member's ledger entries, newest first, a page at a time."""
    async with ctx.db.unit_of_work() as uow:
        return await handlers.ledger_of(uow, chain_id=principal.chain_id, member_id=member_id, cursor=cursor,
                                        limit=limit)


@router.post("/redemptions", status_code=201, response_model=schemas.PostedEntry)
async def redeem(member_id: str, body: schemas.RedemptionRequest, ctx: CtxDep, principal: AppKey,
                 idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Redeem available points (oldest lots first); 409 when they do not cover it or the balance is negative."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        async def action() -> tuple[int, dict]:
            posted = await handlers.redeem(uow, chain_id=principal.chain_id, member_id=member_id, req=body)
            return 201, posted.model_dump(mode="json")

        # the member is part of the request: one key reused for another member is a conflict, not a replay
        return await idempotent(uow, principal, scope="POST /v1/members/{member_id}/points/redemptions",
                                key=idempotency_key, body={"member_id": member_id, **body.model_dump(mode="json")},
                                action=action)


@router.post("/adjustments", status_code=201, response_model=schemas.PostedEntry)
async def adjust(member_id: str, body: schemas.AdjustmentRequest, ctx: CtxDep, principal: OpsKey,
                 idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """Correct a member's points (ops): a credit is available at once, a debit may leave the balance negative."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        async def action() -> tuple[int, dict]:
            posted = await handlers.adjust(uow, chain_id=principal.chain_id, member_id=member_id, req=body)
            return 201, posted.model_dump(mode="json")

        return await idempotent(uow, principal, scope="POST /v1/members/{member_id}/points/adjustments",
                                key=idempotency_key, body={"member_id": member_id, **body.model_dump(mode="json")},
                                action=action)

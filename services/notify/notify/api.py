"""Notify's HTTP API: thin routes over ``handlers``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from shared.api import CtxDep, current_correlation_id, require
from shared.platform import Principal

from . import handlers, schemas

router = APIRouter(prefix="/v1", tags=["notify"])

AnyKey = Annotated[Principal, Depends(require("pos", "app"))]
AppKey = Annotated[Principal, Depends(require("app"))]


@router.get("/members/{member_id}/notifications", response_model=schemas.NotificationList)
async def list_notifications(member_id: str, ctx: CtxDep, principal: AnyKey) -> schemas.NotificationList:
    """The member's notifications, newest first, with their delivery status."""
    async with ctx.db.unit_of_work() as uow:
        return await handlers.notifications_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.get("/members/{member_id}/preferences", response_model=schemas.PreferencesView)
async def get_preferences(member_id: str, ctx: CtxDep, principal: AppKey) -> schemas.PreferencesView:
    """The member's channels, quiet hours and locale."""
    async with ctx.db.unit_of_work() as uow:
        return await handlers.preferences_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.put("/members/{member_id}/preferences", response_model=schemas.PreferencesView)
async def put_preferences(
    member_id: str, body: schemas.PreferencesRequest, ctx: CtxDep, principal: AppKey
) -> schemas.PreferencesView:
    """Replace the member's channels, quiet hours and locale."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        return await handlers.set_preferences(uow, chain_id=principal.chain_id, member_id=member_id, req=body)

"""Notify's HTTP API: thin routes over ``queries`` and ``commands``."""

from __future__ import annotations

from fastapi import APIRouter

from shared.api import AppKey, CtxDep, PosOrApp, current_correlation_id

from . import commands, queries, schemas

router = APIRouter(prefix="/v1", tags=["notify"])


@router.get("/members/{member_id}/notifications", response_model=schemas.NotificationList)
async def list_notifications(member_id: str, ctx: CtxDep, principal: PosOrApp) -> schemas.NotificationList:
    """The member's notifications, newest first, with their delivery status."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.notifications_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.get("/members/{member_id}/preferences", response_model=schemas.PreferencesView)
async def get_preferences(member_id: str, ctx: CtxDep, principal: AppKey) -> schemas.PreferencesView:
    """The member's channels, quiet hours and locale."""
    async with ctx.db.unit_of_work() as uow:
        return await queries.preferences_of(uow, chain_id=principal.chain_id, member_id=member_id)


@router.put("/members/{member_id}/preferences", response_model=schemas.PreferencesView)
async def put_preferences(
    member_id: str, body: schemas.PreferencesRequest, ctx: CtxDep, principal: AppKey
) -> schemas.PreferencesView:
    """Replace the member's channels, quiet hours and locale."""
    async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
        return await commands.set_preferences(uow, chain_id=principal.chain_id, member_id=member_id, req=body)

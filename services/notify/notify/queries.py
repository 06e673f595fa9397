"""What notify's API reads: a member's notifications and preferences."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from shared.db import UnitOfWork
from shared.problems import NotFound

from . import domain, schemas
from .store import hhmm, preferences_from_row
from .tables import contacts, notifications, preferences

LIST_LIMIT = 200


async def known_member(uow: UnitOfWork, *, chain_id: str, member_id: str) -> None:
    """Another chain's member does not exist for this key."""
    found = await uow.session.scalar(
        select(contacts.c.member_id).where(contacts.c.member_id == member_id, contacts.c.chain_id == chain_id)
    )
    if found is None:
        raise NotFound("No such member.")


async def notifications_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.NotificationList:
    rows = (
        await uow.execute(
            select(notifications)
            .where(notifications.c.member_id == member_id, notifications.c.chain_id == chain_id)
            .order_by(notifications.c.created_at.desc(), notifications.c.notification_id)
            .limit(LIST_LIMIT)
        )
    ).all()
    if not rows:
        await known_member(uow, chain_id=chain_id, member_id=member_id)
    return schemas.NotificationList(items=[_notification_view(r) for r in rows])


def _notification_view(row: Any) -> schemas.NotificationView:
    view = schemas.NotificationView.model_validate(row, from_attributes=True)
    # only a pending notification has a next attempt (held by quiet hours, or a retry)
    return view if row.status == "pending" else view.model_copy(update={"next_attempt_at": None})


def preferences_view(member_id: str, p: domain.Preferences) -> schemas.PreferencesView:
    quiet = (
        schemas.QuietHoursIn(start=hhmm(p.quiet_hours.start), end=hhmm(p.quiet_hours.end)) if p.quiet_hours else None
    )
    return schemas.PreferencesView(member_id=member_id, channels=list(p.channels), quiet_hours=quiet, locale=p.locale)


async def preferences_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.PreferencesView:
    await known_member(uow, chain_id=chain_id, member_id=member_id)
    row = (await uow.execute(select(preferences).where(preferences.c.member_id == member_id))).first()
    return preferences_view(member_id, preferences_from_row(row))

"""What notify's API changes: a member's preferences."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import UnitOfWork

from . import domain, schemas
from .queries import known_member, preferences_view
from .store import preference_values, quiet_hours_from
from .tables import preferences


async def set_preferences(
    uow: UnitOfWork, *, chain_id: str, member_id: str, req: schemas.PreferencesRequest
) -> schemas.PreferencesView:
    """Replace the member's preferences; they apply to notifications queued from now on."""
    await known_member(uow, chain_id=chain_id, member_id=member_id)
    quiet = quiet_hours_from(req.quiet_hours.start, req.quiet_hours.end) if req.quiet_hours else None
    prefs = domain.Preferences(channels=domain.canonical_channels(req.channels), locale=req.locale, quiet_hours=quiet)
    values = {**preference_values(prefs), "updated_at": uow.now()}
    await uow.execute(
        pg_insert(preferences)
        .values(member_id=member_id, chain_id=chain_id, **values)
        .on_conflict_do_update(index_elements=["member_id"], set_=values)
    )
    return preferences_view(member_id, prefs)

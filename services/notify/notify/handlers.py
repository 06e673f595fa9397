"""Notify's event handlers (queue notifications, keep the contact projection) and the
commands the API calls. Delivery is in :mod:`notify.delivery`.

Every handler is idempotent by construction: the contact rows are upserts, and notifications
are inserted ``ON CONFLICT (source_event_id, kind, channel) DO NOTHING``.

A BenefitGranted of a voucher queues the marketing ``voucher_granted`` (only with the member's
marketing consent; queued inside the member's quiet hours it is held, ``pending`` with
``next_attempt_at`` at their end); any other benefit the transactional ``benefit_granted``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import Database, UnitOfWork
from shared.events import (
    BenefitGranted,
    CloudEvent,
    MemberEnrolled,
    MemberUpdated,
    PointsExpiringSoon,
    ReferralCompleted,
    TierChanged,
    decode,
)
from shared.platform import chain_timezone as shared_chain_timezone
from shared.problems import NotFound

from . import domain, schemas, templates
from .tables import contacts, notifications, parked_events, preferences

log = logging.getLogger(__name__)

# the platform's default zone: a chain without a (valid) time zone of its own lives here
DEFAULT_TZ = ZoneInfo("Asia/Shanghai")
LIST_LIMIT = 200

Values = Callable[[str], dict[str, Any]]  # locale -> template values


@dataclass(frozen=True)
class Recipient:
    contact: domain.Contact | None
    preferences: domain.Preferences


# ---- rows <-> domain --------------------------------------------------------------------------


def _hhmm(t: time) -> str:
    return t.strftime("%H:%M")


def _time(s: str) -> time:
    return time.fromisoformat(s)


def _contact(row: Any) -> domain.Contact:
    return domain.Contact(
        name=row.name, phone=row.phone, email=row.email, consents=domain.Consents(**(row.consents or {}))
    )


def _preferences(row: Any) -> domain.Preferences:
    if row is None or row.locale is None:
        return domain.Preferences()
    quiet = domain.QuietHours(_time(row.quiet_start), _time(row.quiet_end)) if row.quiet_start else None
    return domain.Preferences(channels=domain.canonical_channels(row.channels), locale=row.locale, quiet_hours=quiet)


def _preference_values(p: domain.Preferences) -> dict[str, Any]:
    return {
        "locale": p.locale,
        "channels": list(p.channels),
        "quiet_start": _hhmm(p.quiet_hours.start) if p.quiet_hours else None,
        "quiet_end": _hhmm(p.quiet_hours.end) if p.quiet_hours else None,
    }


async def recipient_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> Recipient:
    """The member's contact and preferences in one query (defaults when not known yet)."""
    row = (
        await uow.execute(
            select(
                contacts.c.name,
                contacts.c.phone,
                contacts.c.email,
                contacts.c.consents,
                preferences.c.locale,
                preferences.c.channels,
                preferences.c.quiet_start,
                preferences.c.quiet_end,
            )
            .select_from(contacts.outerjoin(preferences, preferences.c.member_id == contacts.c.member_id))
            .where(contacts.c.member_id == member_id, contacts.c.chain_id == chain_id)
        )
    ).first()
    if row is None:
        return Recipient(None, domain.Preferences())
    return Recipient(_contact(row), _preferences(row))


async def chain_timezone(uow: UnitOfWork, chain_id: str) -> tzinfo:
    """The chain's time zone (quiet hours and days are local); only marketing notifications need it,
    so transactional ones cost no lookup."""
    return await shared_chain_timezone(uow.session, chain_id)


def zone_named(name: str | None) -> tzinfo:
    """A chain's zone by its name; none or an unknown one is the platform's default."""
    try:
        return ZoneInfo(name) if name else DEFAULT_TZ
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone for chain; using the default", extra={"timezone": name})
        return DEFAULT_TZ


# ---- queueing ---------------------------------------------------------------------------------


async def queue(
    uow: UnitOfWork,
    event: CloudEvent,
    *,
    member_id: str,
    kind: str,
    values: Values,
    data: dict[str, Any],
    recipient: Recipient | None = None,
    tz: tzinfo | None = None,
) -> int:
    """Queue one notification of ``kind`` per channel the member wants and allows; returns how many.

    A marketing kind needs the marketing consent (else nothing is queued) and, queued inside the
    member's quiet hours (in ``tz``, the chain's zone), is due at their end instead of now.
    The unique (source_event_id, kind, channel) makes this safe to repeat for the same event.
    """
    chain_id = event.chainid
    who = recipient or await recipient_of(uow, chain_id=chain_id, member_id=member_id)
    if who.contact is None:
        await _park(uow, event, member_id=member_id)
        return 0
    spec = domain.KINDS[kind]
    channels = domain.select_channels(spec, who.preferences, who.contact)
    if not channels:
        return 0
    locale = who.preferences.locale
    name = templates.member_name(who.contact.name if who.contact else None, locale)
    title, body = templates.render(kind, locale, {"name": name, **values(locale)})
    now = uow.now()
    if spec.marketing and tz is None:
        tz = await chain_timezone(uow, chain_id)
    not_before = domain.earliest_delivery(spec, who.preferences.quiet_hours, now.astimezone(tz or DEFAULT_TZ))
    await uow.execute(
        pg_insert(notifications)
        .values(
            [
                {
                    "notification_id": str(uuid.uuid4()),
                    "member_id": member_id,
                    "chain_id": chain_id,
                    "kind": kind,
                    "channel": channel,
                    "locale": locale,
                    "title": title,
                    "body": body,
                    "data": {**data, "marketing": spec.marketing},
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": not_before,
                    "source_event_id": event.id,
                    "created_at": now,
                }
                for channel in channels
            ]
        )
        .on_conflict_do_nothing(constraint="notifications_once_per_event")
    )
    return len(channels)


async def _park(uow: UnitOfWork, event: CloudEvent, *, member_id: str) -> None:
    """The event overtook its member's MemberEnrolled: keep it until the enrolment arrives."""
    await uow.execute(
        pg_insert(parked_events)
        .values(
            event_id=event.id,
            member_id=member_id,
            chain_id=event.chainid,
            payload=event.to_json().decode(),
            parked_at=uow.now(),
        )
        .on_conflict_do_nothing()
    )
    log.info(
        "event parked until the member's enrolment arrives", extra={"event_id": event.id, "event_type": event.type}
    )


#: an enrolment that has not arrived this long after an event about the member never will
PARKED_DAYS = 30


async def purge_parked(db: Database, *, older_than: timedelta = timedelta(days=PARKED_DAYS)) -> int:
    """Drop parked events whose member never enrolled (a bad producer, a member of a deleted chain)."""
    async with db.unit_of_work() as uow:
        dropped = (
            await uow.execute(delete(parked_events).where(parked_events.c.parked_at < uow.now() - older_than))
        ).rowcount
    if dropped:
        log.warning("dropped parked events whose member never enrolled", extra={"events": dropped})
    return dropped


async def _unpark(uow: UnitOfWork, *, member_id: str, chain_id: str) -> None:
    """Handle, in the order they came, the events that waited for this member's enrolment."""
    rows = (
        await uow.execute(
            delete(parked_events)
            .where(
                parked_events.c.member_id == member_id,
                parked_events.c.chain_id == chain_id,
            )
            .returning(parked_events.c.seq, parked_events.c.payload)
        )
    ).all()
    for row in sorted(rows, key=lambda r: r.seq):
        event = decode(row.payload)
        await HANDLERS[type(event.data)](event, uow)


# ---- event handlers ---------------------------------------------------------------------------


async def on_member_enrolled(event: CloudEvent, uow: UnitOfWork) -> None:
    d: MemberEnrolled = event.data  # type: ignore[assignment]
    consents = d.consents.model_dump()
    await uow.execute(
        pg_insert(contacts)
        .values(
            member_id=d.member_id,
            chain_id=event.chainid,
            name=d.name,
            phone=d.phone,
            email=d.email,
            consents=consents,
            updated_at=uow.now(),
        )
        .on_conflict_do_nothing()
    )
    defaults = domain.Preferences()
    await uow.execute(
        pg_insert(preferences)
        .values(
            member_id=d.member_id,
            chain_id=event.chainid,
            **_preference_values(defaults),
            updated_at=uow.now(),
        )
        .on_conflict_do_nothing()
    )
    contact = domain.Contact(name=d.name, phone=d.phone, email=d.email, consents=domain.Consents(**consents))
    await queue(
        uow,
        event,
        member_id=d.member_id,
        kind="welcome",
        values=lambda _: {"member_no": d.member_no},
        data={"member_no": d.member_no},
        recipient=Recipient(contact, defaults),
    )
    await _unpark(uow, member_id=d.member_id, chain_id=event.chainid)


async def on_member_updated(event: CloudEvent, uow: UnitOfWork) -> None:
    d: MemberUpdated = event.data  # type: ignore[assignment]
    changes: dict[str, Any] = {}
    if d.name is not None:
        changes["name"] = d.name
    if d.email is not None:
        changes["email"] = d.email
    if d.consents is not None:
        changes["consents"] = d.consents.model_dump()
    if changes:
        await uow.execute(
            update(contacts)
            .where(contacts.c.member_id == d.member_id, contacts.c.chain_id == event.chainid)
            .values(**changes, updated_at=uow.now())
        )


async def on_tier_changed(event: CloudEvent, uow: UnitOfWork) -> None:
    d: TierChanged = event.data  # type: ignore[assignment]
    kind = domain.tier_change_kind(d.direction)
    if kind is None:
        return
    await queue(
        uow,
        event,
        member_id=event.subject,
        kind=kind,
        values=lambda locale: {"tier_name": templates.tier_name(d.to_tier, locale, d.to_tier_name)},
        data={
            "from_tier": d.from_tier,
            "to_tier": d.to_tier,
            "reason": d.reason,
            "effective_at": d.effective_at.isoformat(),
        },
    )


async def on_benefit_granted(event: CloudEvent, uow: UnitOfWork) -> None:
    d: BenefitGranted = event.data  # type: ignore[assignment]
    if domain.benefit_granted_kind(d.code, d.value_fen) == "voucher_granted":
        await _voucher_granted(event, uow, d)
        return
    await queue(
        uow,
        event,
        member_id=event.subject,
        kind="benefit_granted",
        values=lambda locale: {"code": d.code, "benefit_name": templates.benefit_name(d.code, locale)},
        data={
            "benefit_id": d.benefit_id,
            "code": d.code,
            "valid_until": d.valid_until.isoformat() if d.valid_until else None,
        },
    )


async def _voucher_granted(event: CloudEvent, uow: UnitOfWork, d: BenefitGranted) -> None:
    """A voucher is an offer: the marketing ``voucher_granted``, stating its value and last day."""
    tz = await chain_timezone(uow, event.chainid)
    last_day = domain.last_valid_day(d.valid_until, tz)
    await queue(
        uow,
        event,
        member_id=event.subject,
        kind="voucher_granted",
        tz=tz,
        values=lambda locale: {
            "voucher": templates.voucher(d.code, d.value_fen, locale),
            "validity": templates.validity(last_day, locale),
        },
        data={
            "benefit_id": d.benefit_id,
            "code": d.code,
            "value_fen": d.value_fen,
            "valid_until": d.valid_until.isoformat() if d.valid_until else None,
            "last_valid_day": last_day.isoformat() if last_day else None,
        },
    )


async def on_points_expiring(event: CloudEvent, uow: UnitOfWork) -> None:
    d: PointsExpiringSoon = event.data  # type: ignore[assignment]
    await queue(
        uow,
        event,
        member_id=event.subject,
        kind="points_expiring",
        values=lambda _: {"points": d.points, "expires_on": d.expires_on.isoformat()},
        data={"points": d.points, "expires_on": d.expires_on.isoformat()},
    )


async def on_referral_completed(event: CloudEvent, uow: UnitOfWork) -> None:
    # the event's subject may be either side; the message is for the referrer
    d: ReferralCompleted = event.data  # type: ignore[assignment]
    await queue(
        uow,
        event,
        member_id=d.referrer_id,
        kind="referral_completed",
        values=lambda _: {"referral_count": d.referral_count},
        data={"referee_id": d.referee_id, "purchase_id": d.purchase_id, "referral_count": d.referral_count},
    )


HANDLERS = {
    MemberEnrolled: on_member_enrolled,
    MemberUpdated: on_member_updated,
    TierChanged: on_tier_changed,
    BenefitGranted: on_benefit_granted,
    PointsExpiringSoon: on_points_expiring,
    ReferralCompleted: on_referral_completed,
}


# ---- commands (API) ---------------------------------------------------------------------------


async def _known_member(uow: UnitOfWork, *, chain_id: str, member_id: str) -> None:
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
        await _known_member(uow, chain_id=chain_id, member_id=member_id)
    return schemas.NotificationList(items=[_notification_view(r) for r in rows])


def _notification_view(row: Any) -> schemas.NotificationView:
    view = schemas.NotificationView.model_validate(row, from_attributes=True)
    # only a pending notification has a next attempt (held by quiet hours, or a retry)
    return view if row.status == "pending" else view.model_copy(update={"next_attempt_at": None})


def _preferences_view(member_id: str, p: domain.Preferences) -> schemas.PreferencesView:
    quiet = (
        schemas.QuietHoursIn(start=_hhmm(p.quiet_hours.start), end=_hhmm(p.quiet_hours.end)) if p.quiet_hours else None
    )
    return schemas.PreferencesView(member_id=member_id, channels=list(p.channels), quiet_hours=quiet, locale=p.locale)


async def preferences_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.PreferencesView:
    await _known_member(uow, chain_id=chain_id, member_id=member_id)
    row = (await uow.execute(select(preferences).where(preferences.c.member_id == member_id))).first()
    return _preferences_view(member_id, _preferences(row))


async def set_preferences(
    uow: UnitOfWork, *, chain_id: str, member_id: str, req: schemas.PreferencesRequest
) -> schemas.PreferencesView:
    """Replace the member's preferences; they apply to notifications queued from now on."""
    await _known_member(uow, chain_id=chain_id, member_id=member_id)
    quiet = domain.QuietHours(_time(req.quiet_hours.start), _time(req.quiet_hours.end)) if req.quiet_hours else None
    prefs = domain.Preferences(channels=domain.canonical_channels(req.channels), locale=req.locale, quiet_hours=quiet)
    values = {**_preference_values(prefs), "updated_at": uow.now()}
    await uow.execute(
        pg_insert(preferences)
        .values(member_id=member_id, chain_id=chain_id, **values)
        .on_conflict_do_update(index_elements=["member_id"], set_=values)
    )
    return _preferences_view(member_id, prefs)

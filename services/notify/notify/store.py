"""The tables notify's event handlers use, behind one interface: :class:`NotifyStore`.

:class:`SqlStore` is the real one, over the unit of work's transaction; the fast handler tests
give the unit of work an in-memory one instead (``uow.provide(store_key(), InMemoryStore())``).

What the handlers keep: the contact projection (from MemberEnrolled/MemberUpdated), the
members' preferences (defaults on enrolment; the API replaces them), the notifications they
queue (at most one per source event, kind and channel), and the events parked until their
member's MemberEnrolled arrives.

Also here: the mapping between the rows and the domain's values, which the API's queries and
commands share with the store.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, tzinfo
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import Unit, UnitOfWork
from shared.personal_data import data_key_of, keyring_of
from shared.platform import chain_timezone

from . import domain
from .tables import contacts, notifications, parked_events
from .tables import preferences as preferences_table


@dataclass(frozen=True)
class QueuedNotification:
    """A notification as queued: pending, never attempted, due at ``next_attempt_at``."""

    notification_id: str
    member_id: str
    chain_id: str
    kind: str
    channel: domain.Channel
    locale: str
    title: str
    body: str
    data: dict[str, Any]
    next_attempt_at: datetime
    source_event_id: str
    created_at: datetime


class NotifyStore(abc.ABC):
    """Table access of notify's event handlers."""

    @abc.abstractmethod
    async def recipient(self, *, chain_id: str, member_id: str) -> domain.Recipient:
        """The member's contact and preferences (no contact, default preferences, when not known yet)."""

    @abc.abstractmethod
    async def chain_of(self, *, member_id: str) -> str | None:
        """The chain the member's contact is on file in; None before their enrolment arrived."""

    @abc.abstractmethod
    async def add_contact(self, *, chain_id: str, member_id: str, contact: domain.Contact, at: datetime) -> None:
        """Record a newly enrolled member's contact; one already recorded is kept."""

    @abc.abstractmethod
    async def add_preferences(
        self, *, chain_id: str, member_id: str, preferences: domain.Preferences, at: datetime
    ) -> None:
        """Record a newly enrolled member's preferences; ones already recorded are kept."""

    @abc.abstractmethod
    async def update_contact(
        self,
        *,
        chain_id: str,
        member_id: str,
        name: str | None,
        email: str | None,
        consents: domain.Consents | None,
        at: datetime,
        email_removed: bool = False,
    ) -> None:
        """Change what is given (None: unchanged) of a known member's contact; ``email_removed``: forget the
        email; an unknown member is ignored."""

    @abc.abstractmethod
    async def queue_notifications(self, *, queued: Sequence[QueuedNotification]) -> None:
        """Add pending notifications; one whose (source_event_id, kind, channel) is already there is
        skipped, so handling an event again queues nothing new."""

    @abc.abstractmethod
    async def park(self, *, event_id: str, chain_id: str, member_id: str, payload: str, at: datetime) -> None:
        """Keep an event (its JSON) until its member enrols; an event already parked is kept once."""

    @abc.abstractmethod
    async def unpark(self, *, chain_id: str, member_id: str) -> list[str]:
        """Take away the member's parked events, returned in the order they were parked."""

    @abc.abstractmethod
    async def timezone(self, *, chain_id: str) -> tzinfo:
        """The chain's time zone (quiet hours and days are local)."""

    @abc.abstractmethod
    async def contact_key(self, *, chain_id: str, member_id: str) -> bytes | None:
        """The member's data key (their sealed contact details open with it); None once the member was
        erased (the key is destroyed) or when there never was one."""

    @abc.abstractmethod
    async def erase_member(self, *, chain_id: str, member_id: str, at: datetime) -> None:
        """Forget the member (SPEC §8): the contact becomes a tombstone (no name, phone, email or
        consent; kept so that a redelivered enrolment does not bring them back), preferences and parked
        events go, notifications keep their delivery record but lose their text and data."""


def store_of(uow: Unit) -> NotifyStore:
    """The transaction's store: the SQL one, unless a test provided another."""
    return uow.state(store_key(), SqlStore)


def store_key() -> type[NotifyStore]:
    """The store's key in a unit of work's state: the abstract class itself, which mypy refuses as a
    literal argument for ``type[T]`` (python/mypy#4717: it cannot know ``state`` never instantiates it
    when given ``make``) but accepts from a function typed to return it. Tests provide under it."""
    return NotifyStore


# ---- rows <-> domain --------------------------------------------------------------------------


def hhmm(t: time) -> str:
    return t.strftime("%H:%M")


def quiet_hours_from(start: str | None, end: str | None) -> domain.QuietHours | None:
    """Quiet hours stored as "HH:MM" strings; both NULL: none."""
    if not start or not end:
        return None
    return domain.QuietHours(time.fromisoformat(start), time.fromisoformat(end))


def contact_from_row(row: Any) -> domain.Contact:
    consents = {k: v for k, v in (row.consents or {}).items() if k in ("marketing", "sms", "email")}
    return domain.Contact(
        name=row.name,
        phone=row.phone,
        email=row.email,
        consents=domain.Consents(**consents),
        erased=getattr(row, "erased_at", None) is not None,
    )


def preferences_from_row(row: Any) -> domain.Preferences:
    """A preferences row (None, or an outer join's NULLs: not set, the defaults)."""
    if row is None or row.locale is None:
        return domain.Preferences()
    return domain.Preferences(
        channels=domain.canonical_channels(row.channels),
        locale=row.locale,
        quiet_hours=quiet_hours_from(row.quiet_start, row.quiet_end),
    )


def preference_values(p: domain.Preferences) -> dict[str, Any]:
    return {
        "locale": p.locale,
        "channels": list(p.channels),
        "quiet_start": hhmm(p.quiet_hours.start) if p.quiet_hours else None,
        "quiet_end": hhmm(p.quiet_hours.end) if p.quiet_hours else None,
    }


# ---- the real store ---------------------------------------------------------------------------


class SqlStore(NotifyStore):
    """The store over the real tables, in the unit of work's transaction."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def recipient(self, *, chain_id: str, member_id: str) -> domain.Recipient:
        # the contact and the preferences in one query
        row = (
            await self.uow.execute(
                select(
                    contacts.c.name,
                    contacts.c.phone,
                    contacts.c.email,
                    contacts.c.consents,
                    contacts.c.erased_at,
                    preferences_table.c.locale,
                    preferences_table.c.channels,
                    preferences_table.c.quiet_start,
                    preferences_table.c.quiet_end,
                )
                .select_from(
                    contacts.outerjoin(preferences_table, preferences_table.c.member_id == contacts.c.member_id)
                )
                .where(contacts.c.member_id == member_id, contacts.c.chain_id == chain_id)
            )
        ).first()
        if row is None:
            return domain.Recipient(None, domain.Preferences())
        return domain.Recipient(contact_from_row(row), preferences_from_row(row))

    async def chain_of(self, *, member_id: str) -> str | None:
        chain: str | None = await self.uow.session.scalar(
            select(contacts.c.chain_id).where(contacts.c.member_id == member_id)
        )
        return chain

    async def add_contact(self, *, chain_id: str, member_id: str, contact: domain.Contact, at: datetime) -> None:
        await self.uow.execute(
            pg_insert(contacts)
            .values(
                member_id=member_id,
                chain_id=chain_id,
                name=contact.name,
                phone=contact.phone,
                email=contact.email,
                consents=dataclasses.asdict(contact.consents),
                updated_at=at,
            )
            .on_conflict_do_nothing()
        )

    async def add_preferences(
        self, *, chain_id: str, member_id: str, preferences: domain.Preferences, at: datetime
    ) -> None:
        await self.uow.execute(
            pg_insert(preferences_table)
            .values(member_id=member_id, chain_id=chain_id, **preference_values(preferences), updated_at=at)
            .on_conflict_do_nothing()
        )

    async def update_contact(
        self,
        *,
        chain_id: str,
        member_id: str,
        name: str | None,
        email: str | None,
        consents: domain.Consents | None,
        at: datetime,
        email_removed: bool = False,
    ) -> None:
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = name
        if email is not None or email_removed:
            changes["email"] = email
        if consents is not None:
            changes["consents"] = dataclasses.asdict(consents)
        if changes:
            await self.uow.execute(
                update(contacts)
                .where(
                    contacts.c.member_id == member_id, contacts.c.chain_id == chain_id, contacts.c.erased_at.is_(None)
                )
                .values(**changes, updated_at=at)
            )

    async def queue_notifications(self, *, queued: Sequence[QueuedNotification]) -> None:
        if not queued:
            return
        await self.uow.execute(
            pg_insert(notifications)
            .values(
                [
                    {
                        "notification_id": q.notification_id,
                        "member_id": q.member_id,
                        "chain_id": q.chain_id,
                        "kind": q.kind,
                        "channel": q.channel,
                        "locale": q.locale,
                        "title": q.title,
                        "body": q.body,
                        "data": q.data,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": q.next_attempt_at,
                        "source_event_id": q.source_event_id,
                        "created_at": q.created_at,
                    }
                    for q in queued
                ]
            )
            .on_conflict_do_nothing(constraint="notifications_once_per_event")
        )

    async def park(self, *, event_id: str, chain_id: str, member_id: str, payload: str, at: datetime) -> None:
        await self.uow.execute(
            pg_insert(parked_events)
            .values(event_id=event_id, member_id=member_id, chain_id=chain_id, payload=payload, parked_at=at)
            .on_conflict_do_nothing()
        )

    async def unpark(self, *, chain_id: str, member_id: str) -> list[str]:
        rows = (
            await self.uow.execute(
                delete(parked_events)
                .where(parked_events.c.member_id == member_id, parked_events.c.chain_id == chain_id)
                .returning(parked_events.c.seq, parked_events.c.payload)
            )
        ).all()
        return [row.payload for row in sorted(rows, key=lambda r: r.seq)]

    async def timezone(self, *, chain_id: str) -> tzinfo:
        return await chain_timezone(self.uow.session, chain_id)

    async def contact_key(self, *, chain_id: str, member_id: str) -> bytes | None:
        return await data_key_of(self.uow.session, keyring_of(self.uow), chain_id=chain_id, member_id=member_id)

    async def erase_member(self, *, chain_id: str, member_id: str, at: datetime) -> None:
        nothing = dataclasses.asdict(domain.Consents())
        await self.uow.execute(
            pg_insert(contacts)
            .values(member_id=member_id, chain_id=chain_id, consents=nothing, updated_at=at, erased_at=at)
            .on_conflict_do_update(
                index_elements=[contacts.c.member_id],
                set_={
                    "name": None,
                    "phone": None,
                    "email": None,
                    "consents": nothing,
                    "updated_at": at,
                    "erased_at": at,
                },
                where=contacts.c.chain_id == chain_id,
            )
        )
        await self.uow.execute(
            delete(preferences_table).where(
                preferences_table.c.member_id == member_id, preferences_table.c.chain_id == chain_id
            )
        )
        await self.uow.execute(
            delete(parked_events).where(parked_events.c.member_id == member_id, parked_events.c.chain_id == chain_id)
        )
        await self.uow.execute(
            update(notifications)
            .where(notifications.c.member_id == member_id, notifications.c.chain_id == chain_id)
            .values(title="", body="", data={}, last_error=None)
        )

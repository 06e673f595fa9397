"""The in-memory :class:`NotifyStore` of the fast handler tests: dicts and lists, no database.

It keeps the same promises as the SQL store: a contact or preferences recorded once are kept, a
notification is queued at most once per (source event, kind, channel), an event is parked once,
and unparking returns the member's events in the order they were parked and removes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo

from notify import domain
from notify.store import NotifyStore, QueuedNotification
from shared.platform import DEFAULT_TIMEZONE


@dataclass(frozen=True)
class Parked:
    event_id: str
    chain_id: str
    member_id: str
    payload: str
    parked_at: datetime


class InMemoryStore(NotifyStore):
    def __init__(
        self,
        *,
        contacts: dict[str, tuple[str, domain.Contact]] | None = None,
        preferences: dict[str, tuple[str, domain.Preferences]] | None = None,
        timezones: dict[str, tzinfo] | None = None,
        data_keys: dict[str, bytes] | None = None,
    ) -> None:
        #: member_id -> (chain_id, contact)
        self.contacts: dict[str, tuple[str, domain.Contact]] = dict(contacts or {})
        #: member_id -> (chain_id, preferences)
        self.preferences: dict[str, tuple[str, domain.Preferences]] = dict(preferences or {})
        self.notifications: list[QueuedNotification] = []
        self.parked: list[Parked] = []
        self.timezones: dict[str, tzinfo] = dict(timezones or {})
        self.timezone_lookups = 0
        #: member_id -> data key (enrollment's platform.member_keys, unwrapped)
        self.data_keys: dict[str, bytes] = dict(data_keys or {})

    # ---- what a test sets up and reads ----

    def know(
        self,
        member_id: str,
        contact: domain.Contact,
        preferences: domain.Preferences | None = None,
        *,
        chain_id: str = "chain-1",
    ) -> InMemoryStore:
        """A member whose enrolment was handled before (with default preferences unless given)."""
        self.contacts[member_id] = (chain_id, contact)
        self.preferences[member_id] = (chain_id, preferences or domain.Preferences())
        return self

    def contact(self, member_id: str) -> domain.Contact | None:
        held = self.contacts.get(member_id)
        return held[1] if held else None

    def queued(self, member_id: str | None = None, kind: str | None = None) -> list[QueuedNotification]:
        return [
            n
            for n in self.notifications
            if (member_id is None or n.member_id == member_id) and (kind is None or n.kind == kind)
        ]

    # ---- NotifyStore ----

    async def recipient(self, *, chain_id: str, member_id: str) -> domain.Recipient:
        held = self.contacts.get(member_id)
        if held is None or held[0] != chain_id:
            return domain.Recipient(None, domain.Preferences())
        prefs = self.preferences.get(member_id)  # joined by member only, as the SQL does
        return domain.Recipient(held[1], prefs[1] if prefs else domain.Preferences())

    async def chain_of(self, *, member_id: str) -> str | None:
        held = self.contacts.get(member_id)
        return held[0] if held else None

    async def add_contact(self, *, chain_id: str, member_id: str, contact: domain.Contact, at: datetime) -> None:
        self.contacts.setdefault(member_id, (chain_id, contact))

    async def add_preferences(
        self, *, chain_id: str, member_id: str, preferences: domain.Preferences, at: datetime
    ) -> None:
        self.preferences.setdefault(member_id, (chain_id, preferences))

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
        held = self.contacts.get(member_id)
        if held is None or held[0] != chain_id:
            return
        contact = held[1]
        if name is not None:
            contact = replace(contact, name=name)
        if email is not None or email_removed:
            contact = replace(contact, email=email)
        if consents is not None:
            contact = replace(contact, consents=consents)
        self.contacts[member_id] = (chain_id, contact)

    async def queue_notifications(self, *, queued: Sequence[QueuedNotification]) -> None:
        once = {(n.source_event_id, n.kind, n.channel) for n in self.notifications}
        for n in queued:
            if (n.source_event_id, n.kind, n.channel) not in once:
                once.add((n.source_event_id, n.kind, n.channel))
                self.notifications.append(n)

    async def park(self, *, event_id: str, chain_id: str, member_id: str, payload: str, at: datetime) -> None:
        if all(p.event_id != event_id for p in self.parked):
            self.parked.append(Parked(event_id, chain_id, member_id, payload, at))

    async def unpark(self, *, chain_id: str, member_id: str) -> list[str]:
        taken = [p for p in self.parked if p.chain_id == chain_id and p.member_id == member_id]
        self.parked = [p for p in self.parked if p not in taken]
        return [p.payload for p in taken]

    async def timezone(self, *, chain_id: str) -> tzinfo:
        self.timezone_lookups += 1
        return self.timezones.get(chain_id, DEFAULT_TIMEZONE)

    async def contact_key(self, *, chain_id: str, member_id: str) -> bytes | None:
        return self.data_keys.get(member_id)

    async def erase_member(self, *, chain_id: str, member_id: str, at: datetime) -> None:
        held = self.contacts.get(member_id)
        if held is not None and held[0] != chain_id:
            return
        self.contacts[member_id] = (chain_id, domain.Contact(erased=True))
        self.preferences.pop(member_id, None)
        self.parked = [p for p in self.parked if not (p.member_id == member_id and p.chain_id == chain_id)]
        self.notifications = [
            replace(n, title="", body="", data={}) if n.member_id == member_id and n.chain_id == chain_id else n
            for n in self.notifications
        ]

"""Notify's rules as plain code: which kinds exist, which channels a notification goes to,
when a failed delivery is tried again, and quiet hours. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Literal

Channel = Literal["webhook", "sms", "email"]
CHANNELS: tuple[Channel, ...] = ("webhook", "sms", "email")
Locale = Literal["zh-CN", "en"]
LOCALES: tuple[Locale, ...] = ("zh-CN", "en")
DEFAULT_LOCALE: Locale = "zh-CN"


@dataclass(frozen=True)
class Kind:
    """A kind of notification. Transactional kinds need only channel consent; marketing kinds
    also need the marketing consent and wait for the end of the member's quiet hours."""

    code: str
    marketing: bool = False


KINDS: dict[str, Kind] = {k.code: k for k in (
    Kind("welcome"),
    Kind("tier_up"),
    Kind("tier_down"),
    Kind("benefit_granted"),
    Kind("points_expiring"),
    Kind("referral_completed"),
)}


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    def contains(self, t: time) -> bool:
        """Whether ``t`` (the member's local time) is inside; a window may wrap past midnight."""
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


DEFAULT_QUIET_HOURS = QuietHours(time(22, 0), time(8, 0))


@dataclass(frozen=True)
class Preferences:
    channels: tuple[Channel, ...] = CHANNELS
    locale: Locale = DEFAULT_LOCALE
    quiet_hours: QuietHours | None = DEFAULT_QUIET_HOURS


@dataclass(frozen=True)
class Consents:
    marketing: bool = False
    sms: bool = False
    email: bool = False


@dataclass(frozen=True)
class Contact:
    """What notify knows of a member: projected from MemberEnrolled/MemberUpdated."""

    name: str | None = None
    phone: str | None = None
    email: str | None = None
    consents: Consents = field(default_factory=Consents)


def canonical_channels(channels: list[str] | tuple[str, ...]) -> tuple[Channel, ...]:
    """Deduplicated, in the fixed order of :data:`CHANNELS`."""
    return tuple(c for c in CHANNELS if c in channels)


def channel_allowed(channel: Channel, contact: Contact) -> bool:
    """Consent and a reachable address: the chain's own backend (webhook) needs no separate consent."""
    if channel == "webhook":
        return True
    if channel == "sms":
        return contact.consents.sms and bool(contact.phone)
    return contact.consents.email and bool(contact.email)


def select_channels(kind: Kind, preferences: Preferences, contact: Contact | None) -> list[Channel]:
    """The channels one notification of ``kind`` goes to: wanted by the member AND allowed.

    Without a contact (an event overtook the member's MemberEnrolled) nothing is known of the
    member's consents, so only the chain's own backend is told.
    """
    if contact is None:
        return [] if kind.marketing else [c for c in canonical_channels(preferences.channels) if c == "webhook"]
    if kind.marketing and not contact.consents.marketing:
        return []
    return [c for c in canonical_channels(preferences.channels) if channel_allowed(c, contact)]


def tier_change_kind(direction: str) -> str | None:
    return {"up": "tier_up", "down": "tier_down"}.get(direction)


def retry_delay(attempts: int, base_seconds: float) -> timedelta:
    """Exponential backoff after the ``attempts``-th failed attempt: base, 2·base, 4·base, ..."""
    return timedelta(seconds=base_seconds * 2 ** (attempts - 1))


@dataclass(frozen=True)
class Retry:
    at: datetime


@dataclass(frozen=True)
class GiveUp:
    pass


def after_failure(*, attempts: int, max_attempts: int, base_seconds: float, now: datetime) -> Retry | GiveUp:
    """What follows a failed attempt (``attempts`` counts it)."""
    if attempts >= max_attempts:
        return GiveUp()
    return Retry(now + retry_delay(attempts, base_seconds))


def earliest_delivery(kind: Kind, quiet_hours: QuietHours | None, local_now: datetime) -> datetime:
    """When a notification may first go out: now, or for marketing the end of the quiet hours
    (``local_now`` is aware, in the chain's time zone; the result is in the same zone)."""
    if not kind.marketing or quiet_hours is None or not quiet_hours.contains(local_now.time()):
        return local_now
    end = local_now.replace(hour=quiet_hours.end.hour, minute=quiet_hours.end.minute, second=0, microsecond=0)
    return end if end > local_now else end + timedelta(days=1)


@dataclass(frozen=True)
class Notification:
    """One message to one member over one channel, as the channels see it."""

    notification_id: str
    member_id: str
    chain_id: str
    kind: str
    channel: Channel
    locale: str
    title: str
    body: str
    data: dict
    created_at: datetime

    def document(self) -> dict:
        """The JSON a chain's backend receives (and the sink records)."""
        return {
            "notification_id": self.notification_id, "member_id": self.member_id, "kind": self.kind,
            "channel": self.channel, "locale": self.locale, "title": self.title, "body": self.body,
            "data": self.data, "created_at": self.created_at.isoformat(),
        }

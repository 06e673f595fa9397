"""Notify's rules as plain code: which kinds exist, which channels a notification goes to,
when a failed delivery is tried again, and quiet hours. No I/O here.

Marketing or transactional (SPEC §5): a notification about something the member already has
or must act on is *transactional* (welcome, tier up/down, expiring points, a completed referral,
a non-voucher benefit such as priority booking or a skin check) and needs only the consent of
its channel. A *voucher* is an offer — it invites the member to come and spend — so its
notification (``voucher_granted``) is *marketing*: it needs the marketing consent as well (a
member without it gets no row at all, on any channel, and a row whose member withdrew the
consent before delivery is failed, never sent) and it waits out the member's quiet hours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any, Literal

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


KINDS: dict[str, Kind] = {
    k.code: k
    for k in (
        Kind("welcome"),
        Kind("tier_up"),
        Kind("tier_down"),
        Kind("benefit_granted"),
        Kind("voucher_granted", marketing=True),
        Kind("points_expiring"),
        Kind("referral_completed"),
    )
}


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

#: benefit codes that are vouchers even when the event carries no face value
VOUCHER_CODES = frozenset({"birthday_voucher", "referral_voucher"})


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
    #: the member was erased (SPEC §8): nothing is known of them and nothing goes to them
    erased: bool = False


@dataclass(frozen=True)
class Recipient:
    """Whom a notification is for: their contact (None until their MemberEnrolled arrives) and preferences."""

    contact: Contact | None
    preferences: Preferences


def canonical_channels(channels: Sequence[str]) -> tuple[Channel, ...]:
    """Deduplicated, in the fixed order of :data:`CHANNELS`."""
    return tuple(c for c in CHANNELS if c in channels)


def channel_allowed(channel: Channel, contact: Contact) -> bool:
    """Consent and a reachable address: the chain's own backend (webhook) needs no separate consent."""
    if channel == "webhook":
        return True
    if channel == "sms":
        return contact.consents.sms and bool(contact.phone)
    return contact.consents.email and bool(contact.email)


def may_reach(channel: Channel, contact: Contact | None) -> bool:
    """Whether a message may go to the member over ``channel``: the chain's own backend (webhook)
    always, unless the member was erased; SMS and email only with a known contact that consents and
    has the address."""
    if contact is not None and contact.erased:
        return False
    return channel == "webhook" or (contact is not None and channel_allowed(channel, contact))


def has_marketing_consent(contact: Contact | None) -> bool:
    """Marketing needs the member's marketing consent; nothing is known of a member without a contact."""
    return contact is not None and contact.consents.marketing


def select_channels(kind: Kind, preferences: Preferences, contact: Contact | None) -> list[Channel]:
    """The channels one notification of ``kind`` goes to: wanted by the member AND allowed.

    Without a contact nothing is known of the member's consents, so only the chain's own backend
    is told. (The consumer never gets here without one: an event that overtook the member's
    MemberEnrolled is parked until it arrives; see notify.handlers.queue.)
    """
    if kind.marketing and not has_marketing_consent(contact):
        return []
    return [c for c in canonical_channels(preferences.channels) if may_reach(c, contact)]


def tier_change_kind(direction: str) -> str | None:
    return {"up": "tier_up", "down": "tier_down"}.get(direction)


def is_voucher(code: str, value_fen: int | None) -> bool:
    """A benefit with a face value, or one of the known voucher codes, is a voucher: an offer."""
    return value_fen is not None or code in VOUCHER_CODES


def last_valid_day(valid_until: datetime | None, tz: tzinfo) -> date | None:
    """The last local day of a benefit valid until ``valid_until`` (exclusive: a voucher valid until
    local midnight of 1 July can be used through 30 June)."""
    if valid_until is None:
        return None
    return (valid_until - timedelta(microseconds=1)).astimezone(tz).date()


def benefit_granted_kind(code: str, value_fen: int | None) -> str:
    """``voucher_granted`` (marketing) for a voucher, else ``benefit_granted`` (transactional)."""
    return "voucher_granted" if is_voucher(code, value_fen) else "benefit_granted"


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


def quiet_hours_end(quiet_hours: QuietHours | None, local_now: datetime) -> datetime | None:
    """The end of the quiet hours ``local_now`` is in (the next ``end`` o'clock: later today, or
    tomorrow for a window past midnight entered before it), or None outside them. ``local_now``
    is aware, in the chain's time zone; the result is in the same zone."""
    if quiet_hours is None or not quiet_hours.contains(local_now.time()):
        return None
    end = local_now.replace(hour=quiet_hours.end.hour, minute=quiet_hours.end.minute, second=0, microsecond=0)
    return end if end > local_now else end + timedelta(days=1)


def earliest_delivery(kind: Kind, quiet_hours: QuietHours | None, local_now: datetime) -> datetime:
    """When a notification may first go out: now, or for marketing the end of the quiet hours."""
    held_until = quiet_hours_end(quiet_hours, local_now) if kind.marketing else None
    return held_until or local_now


def is_marketing(kind: str, recorded: bool = False) -> bool:
    """Whether a stored notification of ``kind`` is marketing; a kind no longer known keeps the
    flag recorded when it was queued."""
    spec = KINDS.get(kind)
    return spec.marketing if spec is not None else recorded


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
    data: dict[str, Any]
    created_at: datetime

    def document(self) -> dict[str, Any]:
        """The JSON a chain's backend receives (and the sink records)."""
        return {
            "notification_id": self.notification_id,
            "member_id": self.member_id,
            "kind": self.kind,
            "channel": self.channel,
            "locale": self.locale,
            "title": self.title,
            "body": self.body,
            "data": self.data,
            "created_at": self.created_at.isoformat(),
        }

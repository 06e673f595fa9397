"""CloudEvents 1.0 envelope and one frozen pydantic model per event type (SPEC §3).

Every message on a ``membership.*`` topic is the structured-mode JSON of a
:class:`CloudEvent`; its key is the member id. The envelope is generic over its data:
``CloudEvent[PurchaseRecorded]``, so a handler's signature says which event it takes and
mypy checks what it reads of ``event.data``.

Defining a subclass of :class:`EventData` registers it in :data:`EVENT_TYPES` (by class
name, the CloudEvents ``type``); classes whose name starts with ``_`` are shared bases, not
types. ``decode`` turns bytes back into a typed event through that registry. Models ignore
unknown fields so that producers can add fields without breaking older consumers (add,
never rename).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .clock import utcnow
from .tracing import current_trace_context

CONTENT_TYPE = "application/cloudevents+json"
TOPIC_PREFIX = "membership."


def topic_of(service: str) -> str:
    return f"{TOPIC_PREFIX}{service}"


def dlq_of(topic: str) -> str:
    return f"{topic}.dlq"


#: every event type, by its CloudEvents ``type`` (the class name); filled as the classes are defined
EVENT_TYPES: dict[str, type[EventData]] = {}


class EventData(BaseModel):
    """The ``data`` of one event type. Subclasses register themselves in :data:`EVENT_TYPES`."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    #: the service whose topic carries this event type
    publisher: ClassVar[str]
    #: what the message key and the envelope's ``subject`` hold (for the event catalogue)
    key: ClassVar[str] = "member_id: the member the event is about"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.__name__.startswith("_") or "[" in cls.__name__:
            return  # a shared base of several types, or a parametrised copy
        if not isinstance(getattr(cls, "publisher", None), str):
            raise TypeError(f"event type {cls.__name__} must say its publisher")
        known = EVENT_TYPES.get(cls.__name__)
        if known is not None and known is not cls:
            raise TypeError(f"two event types named {cls.__name__}")
        EVENT_TYPES[cls.__name__] = cls


D = TypeVar("D", bound=EventData)


# ---- enrollment ---------------------------------------------------------------------------------


class Consents(BaseModel):
    """The member's current consents (the history is enrollment's: GET /v1/members/{id}/consents)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    marketing: bool = False
    sms: bool = False
    email: bool = False
    #: added: treatment details (purchase items) may be kept (SPEC §8 sensitive personal information)
    sensitive_data: bool = False


class SealedContact(BaseModel):
    """Contact details (name, phone, email) encrypted with the member's data key: AES-256-GCM,
    ``ciphertext`` = base64(12-byte nonce || ciphertext || tag), the member id bound in as associated
    data. The key is never on a topic (shared.personal_data); once the member is erased it is gone."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    alg: Literal["A256GCM"] = "A256GCM"
    #: which data key opens it: ``member:<member_id>``
    key: str
    ciphertext: str


class MemberEnrolled(EventData):
    publisher: ClassVar[str] = "enrollment"
    member_id: str
    member_no: str
    home_clinic_id: str
    source: str
    referred_by: str | None = None
    birthday: date
    enrolled_at: datetime
    # added, then superseded by ``contact``: events of earlier versions carry the details in clear and
    # still decode; nothing publishes them any more (SPEC §8: minimum personal data on the wire)
    name: str | None = None
    phone: str | None = None
    email: str | None = None
    consents: Consents = Consents()
    #: added: name, phone and email, sealed with the member's data key (what notify needs to reach them)
    contact: SealedContact | None = None


class MemberUpdated(EventData):
    publisher: ClassVar[str] = "enrollment"
    member_id: str
    # superseded by ``contact`` (old events still decode; nothing publishes them in clear any more)
    name: str | None = None
    email: str | None = None
    consents: Consents | None = None
    updated_at: datetime
    #: the member removed their email (``email`` is then None): consumers forget the address
    email_removed: bool = False
    #: added: the changed name and/or email, sealed with the member's data key
    contact: SealedContact | None = None


class MemberErased(EventData):
    """Added: the member was erased (SPEC §8). Every service deletes or anonymises what it holds on the
    member; financial records stay under the pseudonymous member_id. The member's data key is already
    destroyed, so sealed details on topics and in dead letters can no longer be opened."""

    publisher: ClassVar[str] = "enrollment"
    member_id: str
    erased_at: datetime


class PurchaseItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    sku: str
    category: str
    amount_fen: int
    qty: int


class PurchaseRecorded(EventData):
    publisher: ClassVar[str] = "enrollment"
    purchase_id: str
    pos_txn_id: str
    clinic_id: str
    member_id: str
    amount_fen: int = Field(gt=0)
    occurred_at: datetime
    #: treatment items are sensitive personal information and no consumer uses them: since SPEC §8 they
    #: stay in enrollment and the event carries an empty list (older events with items still decode)
    items: list[PurchaseItem] = []


class PurchaseRefunded(EventData):
    publisher: ClassVar[str] = "enrollment"
    purchase_id: str
    refund_id: str
    amount_fen: int = Field(gt=0)
    occurred_at: datetime
    member_id: str | None = None  # added: the purchase's member (also the event's subject)


class ActivityRecorded(EventData):
    publisher: ClassVar[str] = "enrollment"
    activity_id: str
    kind: str
    clinic_id: str
    occurred_at: datetime
    member_id: str | None = None  # added


class ReferralCompleted(EventData):
    publisher: ClassVar[str] = "enrollment"
    referrer_id: str
    referee_id: str
    purchase_id: str
    completed_at: datetime
    referral_count: int


# ---- points -------------------------------------------------------------------------------------

EntryType = Literal["earn", "redeem", "expire", "reverse", "adjust"]


class PointsChanged(EventData):
    publisher: ClassVar[str] = "points"
    entry_id: str
    delta: int
    balance: int
    entry_type: EntryType
    reason: str
    source_event_id: str | None = None
    # added: when the points were earned (for trailing qualification windows), and whether they qualify
    occurred_at: datetime | None = None
    qualifying: bool = False
    available: int | None = None
    pending: int | None = None
    # added: the member's remaining points by expiry date after this change (for the status view)
    expiring: list[ExpiringPoints] | None = None
    # added: when the pending points become available, so a view can move them without an event
    pending_until: list[PendingPoints] | None = None


class ExpiringPoints(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    points: int
    expires_on: date


class PendingPoints(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    points: int
    available_at: datetime


class PointsSnapshot(EventData):
    """Added: the member's points as points holds them now, re-published by an operator's rebuild of
    the status view (``POST /v1/ops/snapshots``). The points part of PointsChanged, without an entry:
    a consumer's copy of the member's points is replaced by it."""

    publisher: ClassVar[str] = "points"
    balance: int
    available: int
    pending: int
    expiring: list[ExpiringPoints]
    pending_until: list[PendingPoints]


class PointsExpiringSoon(EventData):
    publisher: ClassVar[str] = "points"
    points: int
    expires_on: date
    lot_id: str | None = None


# ---- tiering ------------------------------------------------------------------------------------


class TierChanged(EventData):
    publisher: ClassVar[str] = "tiering"
    from_tier: str | None
    to_tier: str
    direction: Literal["up", "down", "none"]
    reason: Literal["qualified", "review", "override", "recalculation"]
    policy_version: int
    effective_at: datetime
    review_at: datetime | None = None
    to_tier_name: str | None = None  # added: the tier's display name in the policy version


class TierProgressChanged(EventData):
    """Added: the member's qualification counters after a change, for the status view."""

    publisher: ClassVar[str] = "tiering"
    tier: str
    tier_name: str | None = None
    next_tier: str | None
    spend_fen: int
    spend_needed_fen: int
    points: int
    points_needed: int
    review_at: datetime | None = None
    policy_version: int


class TierSnapshot(EventData):
    """Added: the member's tier and progress as tiering holds them now, re-published by an operator's
    rebuild of the status view (``POST /v1/ops/snapshots``): TierChanged's tier (code, name, since,
    review date) and TierProgressChanged's counters in one event, which replaces a consumer's copy."""

    publisher: ClassVar[str] = "tiering"
    tier: str
    tier_name: str | None = None
    since: datetime
    review_at: datetime | None = None
    next_tier: str | None
    spend_fen: int
    spend_needed_fen: int
    points: int
    points_needed: int
    policy_version: int


class PolicyChanged(EventData):
    """Added: a chain's programme changed; ``policy`` is the whole new version (shared.policy.Policy).
    Its subject is ``chain:<chain_id>``, not a member."""

    publisher: ClassVar[str] = "tiering"
    key: ClassVar[str] = "chain:<chain_id>: the chain whose programme changed (not a member)"
    version: int
    policy: dict[str, Any]
    changed_at: datetime


# ---- benefits -----------------------------------------------------------------------------------


class _BenefitEvent(EventData):
    publisher: ClassVar[str] = "benefits"
    benefit_id: str
    code: str
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    remaining_uses: int | None = None
    value_fen: int | None = None  # added: vouchers' face value


class BenefitGranted(_BenefitEvent):
    pass


class BenefitRedeemed(_BenefitEvent):
    clinic_id: str | None = None


class BenefitRevoked(_BenefitEvent):
    pass


class HeldBenefit(BaseModel):
    """One entitlement of a :class:`BenefitsSnapshot`, as the status view keeps it."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    benefit_id: str
    code: str
    remaining_uses: int | None = None
    valid_until: datetime | None = None


class BenefitsSnapshot(EventData):
    """Added: every entitlement the member holds now (active, or used up but not yet ended), as
    benefits holds them, re-published by an operator's rebuild of the status view
    (``POST /v1/ops/snapshots``). It replaces a consumer's whole set of the member's benefits."""

    publisher: ClassVar[str] = "benefits"
    benefits: list[HeldBenefit]


# ---- notify -------------------------------------------------------------------------------------


class _NotificationEvent(EventData):
    publisher: ClassVar[str] = "notify"
    notification_id: str
    kind: str
    channel: str
    attempts: int
    error: str | None = None


class NotificationSent(_NotificationEvent):
    pass


class NotificationFailed(_NotificationEvent):
    pass


class CloudEvent(BaseModel, Generic[D]):
    """A CloudEvents 1.0 structured-mode envelope with membership extensions, typed by its data."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    type: str
    subject: str
    time: datetime = Field(default_factory=utcnow)
    datacontenttype: Literal["application/json"] = "application/json"
    dataschemaversion: int = 1
    chainid: str
    correlationid: str | None = None
    causationid: str | None = None
    #: extension: the event comes from an imported history (bulk import), or was caused by one; it
    #: changes points, tiers and benefits like any other, but nobody is notified of it
    imported: bool = False
    #: extension (CloudEvents distributed tracing): the W3C trace context of the span the event was
    #: created in, so its consumers' spans continue the request's trace (shared.tracing); absent when
    #: tracing is off
    traceparent: str | None = None
    tracestate: str | None = None
    data: D

    @field_validator("time")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("time must carry a UTC offset")
        return v

    @property
    def member_id(self) -> str:
        return self.subject

    @property
    def topic(self) -> str:
        return topic_of(self.data.publisher)

    def to_json(self) -> bytes:
        # the trace extension only when set: an event made with tracing off is byte for byte as before
        if self.traceparent is None:
            return self.model_dump_json(exclude=_NO_TRACE).encode()
        return self.model_dump_json(exclude=_NO_TRACESTATE if self.tracestate is None else None).encode()


_NO_TRACE = {"traceparent", "tracestate"}
_NO_TRACESTATE = {"tracestate"}


def envelope_of(data_type: type[D]) -> type[CloudEvent[D]]:
    """``CloudEvent[data_type]``: the envelope class that validates and serialises exactly that data."""
    return cast("type[CloudEvent[D]]", CloudEvent.__class_getitem__(data_type))


def new_event(
    data: D,
    *,
    member_id: str,
    chain_id: str,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    time: datetime | None = None,
    imported: bool = False,
) -> CloudEvent[D]:
    traceparent, tracestate = current_trace_context()
    return envelope_of(type(data))(
        imported=imported,
        traceparent=traceparent,
        tracestate=tracestate,
        source=f"membership/{data.publisher}",
        type=type(data).__name__,
        subject=member_id,
        chainid=chain_id,
        correlationid=correlation_id,
        causationid=causation_id,
        data=data,
        **({"time": time} if time is not None else {}),
    )


class UndecodableEvent(ValueError):
    """The bytes are not a CloudEvent of a known type with valid data."""


class UnknownEventType(UndecodableEvent):
    """A well-formed envelope of a type this code does not know: a newer producer added it.
    Consumers skip it (adding event types is compatible); it is not poison."""


def peek_type(doc: Any) -> str | None:
    """The ``type`` of a parsed envelope, when it has one."""
    event_type = doc.get("type") if isinstance(doc, dict) else None
    return event_type if isinstance(event_type, str) else None


def parse(raw: bytes | str) -> dict[str, Any]:
    """The JSON object of a message; anything else is undecodable."""
    try:
        doc: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UndecodableEvent(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise UndecodableEvent("not a JSON object")
    return doc


def decode(raw: bytes | str | dict[str, Any], types: Mapping[str, type[EventData]] = EVENT_TYPES) -> CloudEvent[Any]:
    """A typed event from a message. ``types``: the types the caller takes (default: all known);
    another type raises :class:`UnknownEventType` when its envelope is well formed."""
    doc = raw if isinstance(raw, dict) else parse(raw)
    event_type = peek_type(doc)
    model = types.get(event_type) if event_type is not None else None
    if model is None:
        well_formed = all(isinstance(doc.get(k), str) and doc.get(k) for k in ("id", "type", "source", "subject"))
        if well_formed and doc.get("specversion") == "1.0" and isinstance(doc.get("data"), dict):
            raise UnknownEventType(f"unknown event type {event_type!r}")
        raise UndecodableEvent(f"unknown event type {event_type!r}")
    if not (isinstance(doc.get("id"), str) and doc["id"]):
        # without its own id an event could not be told from its redelivery (the inbox keys on it)
        raise UndecodableEvent(f"{event_type} without an id")
    try:
        return envelope_of(model).model_validate(doc)
    except ValidationError as exc:
        raise UndecodableEvent(f"invalid {event_type}: {exc.errors(include_url=False, include_input=False)}") from exc

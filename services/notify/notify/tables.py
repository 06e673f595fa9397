"""The notify schema: contacts (a projection of enrollment's events), preferences, notifications."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import shared_tables

SCHEMA = "notify"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)

# What notify knows of a member, from MemberEnrolled/MemberUpdated. The phone and email are
# only ever written to a channel, never to a log.
contacts = Table(
    "contacts",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("name", Text),
    Column("phone", Text),
    Column("email", Text),
    Column("consents", JSONB, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # set by MemberErased (migration 0006): name, phone and email are NULL, the member gets nothing
    Column("erased_at", DateTime(timezone=True)),
)

preferences = Table(
    "preferences",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("locale", Text, nullable=False, server_default="zh-CN"),
    Column("channels", ARRAY(Text), nullable=False),
    Column("quiet_start", Text),  # "HH:MM" in the chain's time zone; both NULL: no quiet hours
    Column("quiet_end", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

notifications = Table(
    "notifications",
    metadata,
    Column("notification_id", Text, primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("chain_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("locale", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("data", JSONB, nullable=False, server_default="{}"),
    Column("status", Text, nullable=False, server_default="pending"),  # pending | sent | failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("source_event_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True)),
    # one notification per event, kind and channel: a redelivered or re-published event queues nothing new
    UniqueConstraint("source_event_id", "kind", "channel", name="notifications_once_per_event"),
    Index("notifications_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    Index("notifications_member", "member_id", "created_at"),
)

# Events that overtook the member's MemberEnrolled (it travels on another topic): without the
# contact notify can't tell the member's consents, so the event waits here and is handled when
# the enrolment arrives, in the enrolment's transaction.
parked_events = Table(
    "parked_events",
    metadata,
    Column("seq", BigInteger, Identity(), primary_key=True),
    Column("event_id", Text, nullable=False, unique=True),
    Column("member_id", Text, nullable=False),
    Column("chain_id", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("parked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("parked_events_member", "member_id", "chain_id"),
)

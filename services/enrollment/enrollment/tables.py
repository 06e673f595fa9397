"""The enrollment schema."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import shared_tables
from shared.policy_store import PolicyStore, policy_table

SCHEMA = "enrollment"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)
policies = PolicyStore(policy_table(metadata))

members = Table(
    "members",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("member_no", Text, nullable=False, unique=True),
    # phone, name, birthday and email are NULL once the member is erased (erased_at set): the phone may
    # then enrol again, as a new member
    Column("phone", Text),
    Column("name", Text),
    Column("birthday", Date),
    Column("home_clinic_id", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("referral_code", Text, nullable=False, unique=True),
    Column("referred_by", Text),
    Column("consents", JSONB, nullable=False),
    Column("email", Text),
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # completed referrals of this member as referrer; incremented atomically (the 3rd is special)
    Column("referrals_completed", Integer, nullable=False, server_default="0"),
    Column("erased_at", DateTime(timezone=True)),  # added by migration 0006
    UniqueConstraint("chain_id", "phone", name="members_chain_phone"),
    Index("members_referred_by", "referred_by"),  # created by migration 0002
)

# The consent history (SPEC §8): one row per purpose granted or withdrawn, never changed afterwards.
consent_records = Table(
    "consent_records",
    metadata,
    Column("seq", BigInteger, Identity(), primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("chain_id", Text, nullable=False),
    Column("purpose", Text, nullable=False),  # marketing | sms | email | sensitive_data | guardian
    Column("granted", Boolean, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("source", Text, nullable=False),  # clinic | app
    Column("policy_version", Text, nullable=False),  # the privacy policy the member was shown
    Index("consent_records_member", "member_id", "seq"),
)

purchases = Table(
    "purchases",
    metadata,
    Column("purchase_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("clinic_id", Text, nullable=False),
    Column("pos_txn_id", Text, nullable=False),
    Column("member_id", Text, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("refunded_fen", BigInteger, nullable=False, server_default="0"),
    Column("currency", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("items", JSONB, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("chain_id", "clinic_id", "pos_txn_id", name="purchases_pos_txn"),
    Index("purchases_member", "member_id", "occurred_at"),
)

refunds = Table(
    "refunds",
    metadata,
    Column("chain_id", Text, primary_key=True),
    Column("refund_id", Text, primary_key=True),
    Column("purchase_id", Text, nullable=False, index=True),
    Column("member_id", Text, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# A referee's referral: pending until their first purchase of at least the policy's amount
# has outlived the return window without being refunded below it; then completed, once.
referrals = Table(
    "referrals",
    metadata,
    Column("referee_id", Text, primary_key=True),
    Column("referrer_id", Text, nullable=False),
    Column("chain_id", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("purchase_id", Text),
    Column("referral_count", Integer),
    Column("completed_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("referrals_pending", "referee_id", postgresql_where="status = 'pending'"),
)

activities = Table(
    "activities",
    metadata,
    Column("chain_id", Text, primary_key=True),
    Column("activity_id", Text, primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("clinic_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The member status view: a projection of points, tiering and benefits events.
member_status = Table(
    "member_status",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("tier", JSONB),
    Column("progress", JSONB),
    Column("points", JSONB),
    Column("benefits", JSONB, nullable=False, server_default="{}"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

"""The points schema."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Identity,
    Index,
    MetaData,
    Table,
    Text,
    func,
    text,
)

from shared.db import shared_tables
from shared.policy_store import PolicyStore, policy_table

SCHEMA = "points"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)
# each chain's programme versions, copied from tiering's PolicyChanged events
policies = PolicyStore(policy_table(metadata))

# A projection of MemberEnrolled plus the member's balance. The row is the member's write lock:
# every change of a member's points locks it FOR UPDATE first, so one member's writes are serial.
members = Table(
    "members",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    Column("balance", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Every positive credit is a lot; debits lower ``remaining``. sum(remaining) == max(balance, 0).
lots = Table(
    "lots",
    metadata,
    Column("lot_id", Text, primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("earned_at", DateTime(timezone=True), nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False),
    Column("expires_on", Date, nullable=False),
    Column("qualifying", Boolean, nullable=False),
    Column("purchase_id", Text),
    Column("entry_id", Text, nullable=False),
    # PointsExpiringSoon published: set in the transaction that publishes it, so once per lot
    Column("expiry_notified_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("remaining >= 0 AND remaining <= points", name="lots_remaining_in_range"),
    Index("lots_open", "member_id", "earned_at", postgresql_where=text("remaining > 0")),
    Index("lots_expiring", "expires_on", postgresql_where=text("remaining > 0")),
    Index("lots_to_warn", "expires_on", postgresql_where=text("remaining > 0 AND expiry_notified_at IS NULL")),
)

# The ledger: one row per change, ``seq`` orders a member's entries (and the ledger's cursor).
entries = Table(
    "entries",
    metadata,
    Column("seq", BigInteger, Identity(), primary_key=True),
    Column("entry_id", Text, nullable=False, unique=True),
    Column("member_id", Text, nullable=False),
    Column("chain_id", Text, nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("balance", BigInteger, nullable=False),
    Column("entry_type", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("source_event_id", Text),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("qualifying", Boolean, nullable=False),
    Column("capped", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("entry_type IN ('earn', 'redeem', 'expire', 'reverse', 'adjust')", name="entries_entry_type"),
    Index("entries_member", "member_id", "seq"),
)

# What each purchase earned and how much of it refunds have reversed (proportional reversal).
purchase_points = Table(
    "purchase_points",
    metadata,
    Column("purchase_id", Text, primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("earned", BigInteger, nullable=False),
    Column("refunded_fen", BigInteger, nullable=False, server_default="0"),
    Column("reversed", BigInteger, nullable=False, server_default="0"),
    Column("lot_id", Text),
)

refunds = Table(
    "refunds",
    metadata,
    Column("purchase_id", Text, primary_key=True),
    Column("refund_id", Text, primary_key=True),
    Column("amount_fen", BigInteger, nullable=False),
    Column("reversed", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
)

# Behaviour points awarded per member per calendar month (chain time zone), for the monthly cap.
behaviour_months = Table(
    "behaviour_months",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("month", Date, primary_key=True),
    Column("awarded", BigInteger, nullable=False),
)

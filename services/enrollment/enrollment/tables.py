"""The enrollment schema."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger, Column, Date, DateTime, Index, MetaData, Table, Text, UniqueConstraint, func,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import shared_tables

SCHEMA = "enrollment"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)

members = Table(
    "members", metadata,
    Column("member_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("member_no", Text, nullable=False, unique=True),
    Column("phone", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("birthday", Date, nullable=False),
    Column("home_clinic_id", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("referral_code", Text, nullable=False, unique=True),
    Column("referred_by", Text),
    Column("consents", JSONB, nullable=False),
    Column("email", Text),
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("chain_id", "phone", name="members_chain_phone"),
)

purchases = Table(
    "purchases", metadata,
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

activities = Table(
    "activities", metadata,
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
    "member_status", metadata,
    Column("member_id", Text, primary_key=True),
    Column("tier", JSONB),
    Column("progress", JSONB),
    Column("points", JSONB),
    Column("benefits", JSONB, nullable=False, server_default="{}"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

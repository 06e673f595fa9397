"""The tiering schema."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import shared_tables

SCHEMA = "tiering"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)

# The programme as versioned data: a PUT adds a version, nothing is ever changed in place.
policies = Table(
    "policies",
    metadata,
    Column("chain_id", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("document", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Each member's current tier; the row is the lock that serialises a member's tier changes.
members = Table(
    "members",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("review_at", DateTime(timezone=True)),
    Column("policy_version", Integer, nullable=False),
    Column("enrolled_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # an ops override holds the member at override_tier or above until override_until (never for ever)
    Column("override_tier", Text),
    Column("override_reason", Text),
    Column("override_until", DateTime(timezone=True)),
    Index("members_review_due", "review_at"),
    Index("members_chain_tier", "chain_id", "tier"),
    Index("members_override_due", "override_until", postgresql_where=text("override_until IS NOT NULL")),
    Index("members_chain_member", "chain_id", "member_id"),
)

# What counts towards qualification, one row per consumed event, at the time it happened:
# trailing-window sums are one indexed range query, correct for late events too.
qualifying_facts = Table(
    "qualifying_facts",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("spend_fen", BigInteger, nullable=False, server_default="0"),
    Column("points", BigInteger, nullable=False, server_default="0"),
    Column("source_event_id", Text, nullable=False, unique=True),
    Index("qualifying_facts_member_time", "member_id", "occurred_at"),
)

tier_history = Table(
    "tier_history",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("from_tier", Text),
    Column("to_tier", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("effective_at", DateTime(timezone=True), nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("review_at", DateTime(timezone=True)),  # the review date this change set
    Column("note", Text),  # an override's reason, as the operator gave it
    Index("tier_history_member", "member_id", "id"),
    Index("tier_history_member_time", "member_id", "effective_at"),
)

# A background re-evaluation of a chain under one policy version. The worker processes it in
# keyset batches (member_id > cursor); each batch commits together with its progress, so a job
# survives a worker restart and two replicas never process the same batch (FOR UPDATE SKIP LOCKED).
recalc_jobs = Table(
    "recalc_jobs",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("policy_version", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("total", Integer, nullable=False, server_default="0"),
    Column("processed", Integer, nullable=False, server_default="0"),
    Column("moved", Integer, nullable=False, server_default="0"),
    Column("cursor", Text),
    Column("error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('running', 'done', 'failed')", name="recalc_jobs_status"),
    Index("recalc_jobs_running", "started_at", postgresql_where=text("status = 'running'")),
)

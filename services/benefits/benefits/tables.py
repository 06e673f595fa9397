"""The benefits schema: the member projection, entitlements, redemptions and the chains' policies."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)

from shared.db import shared_tables
from shared.policy_store import PolicyStore, policy_table

SCHEMA = "benefits"
metadata = MetaData(schema=SCHEMA)
shared = shared_tables(metadata)
policies = PolicyStore(policy_table(metadata))

# What this service knows of a member, from MemberEnrolled and TierChanged.
members = Table(
    "members",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("tier", Text, nullable=False),
    # effective time of the tier: an older TierChanged (a replay) never overwrites a newer one
    Column("tier_since", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("birthday", Date),  # None for members enrolled before 0002 (no birthday voucher for them)
    # the birthday schedule looks members up by chain and birth month
    Index(
        "members_birth_month",
        "chain_id",
        text("EXTRACT(month FROM birthday)"),
        postgresql_where=text("birthday IS NOT NULL"),
    ),
)

entitlements = Table(
    "entitlements",
    metadata,
    Column("benefit_id", Text, primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("chain_id", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("tier", Text),  # the tier it came with; None for vouchers and referral rewards (never revoked)
    Column("value_fen", BigInteger),
    Column("percent", Integer),
    Column("valid_from", DateTime(timezone=True), nullable=False),
    Column("valid_until", DateTime(timezone=True)),  # None: while the tier is held
    Column("remaining_uses", Integer),  # None: unlimited
    Column("status", Text, nullable=False, server_default="active"),
    Column("source_event_id", Text, nullable=False),
    # what a once-per-something grant is once per: "2027" (birthday), a tier-year's first day, a purchase id
    Column("period", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('active', 'used', 'revoked', 'expired')", name="entitlements_status"),
    CheckConstraint("remaining_uses IS NULL OR remaining_uses >= 0", name="entitlements_uses"),
    # one event grants a code to a member at most once
    UniqueConstraint("member_id", "code", "source_event_id", name="entitlements_grant_once"),
    # one grant per member, code and period, however many replicas, re-runs and replays (NULLs are distinct)
    UniqueConstraint("member_id", "code", "period", name="entitlements_once_per_period"),
    # a member holds at most one active tier-bound benefit per code, apart from period-keyed ones
    # (one care pack per purchase; a tier-year's skin check replaces the last one explicitly)
    Index(
        "entitlements_one_active_per_code",
        "member_id",
        "code",
        unique=True,
        postgresql_where=text("tier IS NOT NULL AND status = 'active' AND period IS NULL"),
    ),
    Index("entitlements_active_expiry", "valid_until", postgresql_where=text("status = 'active'")),
)

redemptions = Table(
    "redemptions",
    metadata,
    Column("redemption_id", Text, primary_key=True),
    Column("benefit_id", Text, nullable=False),
    Column("member_id", Text, nullable=False),
    Column("chain_id", Text, nullable=False),
    Column("clinic_id", Text, nullable=False),
    Column("remaining_uses", Integer),  # after this redemption
    Column("redeemed_at", DateTime(timezone=True), nullable=False),
    Index("redemptions_benefit", "benefit_id"),
)

# Every tier a member moved to and when (from TierChanged), so a purchase is judged by the tier
# held when it was made, whichever of the two events arrives first (they travel on different topics).
tier_changes = Table(
    "tier_changes",
    metadata,
    Column("member_id", Text, nullable=False),
    Column("effective_at", DateTime(timezone=True), nullable=False),
    Column("to_tier", Text, nullable=False),
    PrimaryKeyConstraint("member_id", "effective_at"),
)

# Purchases large enough for a care pack: a TierChanged that arrives after them re-judges those
# made since it took effect.
large_purchases = Table(
    "large_purchases",
    metadata,
    Column("purchase_id", Text, primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Index("large_purchases_member", "member_id", "occurred_at"),
)

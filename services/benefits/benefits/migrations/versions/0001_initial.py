"""members, entitlements, redemptions; outbox, inbox, idempotency keys

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

from shared.migrate import create_shared_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
S = "benefits"


def upgrade() -> None:
    create_shared_tables(op, S)
    op.create_table(
        "members",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("tier", sa.Text, nullable=False),
        sa.Column("tier_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "entitlements",
        sa.Column("benefit_id", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("tier", sa.Text),
        sa.Column("value_fen", sa.BigInteger),
        sa.Column("percent", sa.Integer),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_until", sa.DateTime(timezone=True)),
        sa.Column("remaining_uses", sa.Integer),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("source_event_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('active', 'used', 'revoked', 'expired')", name="entitlements_status"),
        sa.CheckConstraint("remaining_uses IS NULL OR remaining_uses >= 0", name="entitlements_uses"),
        sa.UniqueConstraint("member_id", "code", "source_event_id", name="entitlements_grant_once"),
        schema=S,
    )
    op.create_index("entitlements_one_active_per_code", "entitlements", ["member_id", "code"], unique=True,
                    postgresql_where=sa.text("tier IS NOT NULL AND status = 'active'"), schema=S)
    op.create_index("entitlements_active_expiry", "entitlements", ["valid_until"],
                    postgresql_where=sa.text("status = 'active'"), schema=S)
    op.create_table(
        "redemptions",
        sa.Column("redemption_id", sa.Text, primary_key=True),
        sa.Column("benefit_id", sa.Text, nullable=False),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("clinic_id", sa.Text, nullable=False),
        sa.Column("remaining_uses", sa.Integer),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index("redemptions_benefit", "redemptions", ["benefit_id"], schema=S)

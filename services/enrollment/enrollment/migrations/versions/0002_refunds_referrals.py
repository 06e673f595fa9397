"""refunds, referrals, policy copies

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from shared.policy_store import create_policy_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
S = "enrollment"


def upgrade() -> None:
    create_policy_table(op, S)
    op.add_column("members", sa.Column("referrals_completed", sa.Integer, nullable=False, server_default="0"),
                  schema=S)
    op.create_index("members_referred_by", "members", ["referred_by"], schema=S)
    op.create_table(
        "refunds",
        sa.Column("chain_id", sa.Text, primary_key=True),
        sa.Column("refund_id", sa.Text, primary_key=True),
        sa.Column("purchase_id", sa.Text, nullable=False, index=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "referrals",
        sa.Column("referee_id", sa.Text, primary_key=True),
        sa.Column("referrer_id", sa.Text, nullable=False),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("purchase_id", sa.Text),
        sa.Column("referral_count", sa.Integer),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("referrals_pending", "referrals", ["referee_id"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))

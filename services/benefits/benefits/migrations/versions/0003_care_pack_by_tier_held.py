"""tier_changes and large_purchases: a care pack is judged by the tier held when the purchase was made

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
S = "benefits"


def upgrade() -> None:
    op.create_table(
        "tier_changes",
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("to_tier", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("member_id", "effective_at"),
        schema=S,
    )
    # what is known so far: each member's current tier since when they got it
    op.execute(f"INSERT INTO {S}.tier_changes (member_id, effective_at, to_tier) "
               f"SELECT member_id, tier_since, tier FROM {S}.members")
    op.create_table(
        "large_purchases",
        sa.Column("purchase_id", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index("large_purchases_member", "large_purchases", ["member_id", "occurred_at"], schema=S)


def downgrade() -> None:
    op.drop_table("large_purchases", schema=S)
    op.drop_table("tier_changes", schema=S)

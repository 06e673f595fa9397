"""policies, members, qualifying facts, tier history; outbox, inbox, idempotency keys

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from shared.migrate import create_shared_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
S = "tiering"


def upgrade() -> None:
    create_shared_tables(op, S)
    op.create_table(
        "policies",
        sa.Column("chain_id", sa.Text, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("document", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "members",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("tier", sa.Text, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("review_at", sa.DateTime(timezone=True)),
        sa.Column("policy_version", sa.Integer, nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("members_review_due", "members", ["review_at"], schema=S)
    op.create_index("members_chain_tier", "members", ["chain_id", "tier"], schema=S)
    op.create_table(
        "qualifying_facts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spend_fen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("points", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("source_event_id", sa.Text, nullable=False, unique=True),
        schema=S,
    )
    op.create_index("qualifying_facts_member_time", "qualifying_facts", ["member_id", "occurred_at"], schema=S)
    op.create_table(
        "tier_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("from_tier", sa.Text),
        sa.Column("to_tier", sa.Text, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("policy_version", sa.Integer, nullable=False),
        schema=S,
    )
    op.create_index("tier_history_member", "tier_history", ["member_id", "id"], schema=S)

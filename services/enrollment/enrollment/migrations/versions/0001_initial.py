"""members, purchases, activities, the status view; outbox, inbox, idempotency keys

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
S = "enrollment"


def upgrade() -> None:
    create_shared_tables(op, S)
    op.execute(f"CREATE SEQUENCE {S}.member_no_seq")
    op.create_table(
        "members",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("member_no", sa.Text, nullable=False, unique=True),
        sa.Column("phone", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("birthday", sa.Date, nullable=False),
        sa.Column("home_clinic_id", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("referral_code", sa.Text, nullable=False, unique=True),
        sa.Column("referred_by", sa.Text),
        sa.Column("consents", JSONB, nullable=False),
        sa.Column("email", sa.Text),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("chain_id", "phone", name="members_chain_phone"),
        schema=S,
    )
    op.create_table(
        "purchases",
        sa.Column("purchase_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("clinic_id", sa.Text, nullable=False),
        sa.Column("pos_txn_id", sa.Text, nullable=False),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("refunded_fen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("items", JSONB, nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("chain_id", "clinic_id", "pos_txn_id", name="purchases_pos_txn"),
        schema=S,
    )
    op.create_index("purchases_member", "purchases", ["member_id", "occurred_at"], schema=S)
    op.create_table(
        "activities",
        sa.Column("chain_id", sa.Text, primary_key=True),
        sa.Column("activity_id", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("clinic_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "member_status",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("tier", JSONB),
        sa.Column("progress", JSONB),
        sa.Column("points", JSONB),
        sa.Column("benefits", JSONB, nullable=False, server_default="{}"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )

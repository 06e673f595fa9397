"""members, lots, ledger entries, purchase points, refunds, behaviour months; outbox, inbox, idempotency keys

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
S = "points"


def upgrade() -> None:
    create_shared_tables(op, S)
    op.create_table(
        "members",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "lots",
        sa.Column("lot_id", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("remaining", sa.BigInteger, nullable=False),
        sa.Column("earned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_on", sa.Date, nullable=False),
        sa.Column("qualifying", sa.Boolean, nullable=False),
        sa.Column("purchase_id", sa.Text),
        sa.Column("entry_id", sa.Text, nullable=False),
        sa.Column("expiry_notified_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("remaining >= 0 AND remaining <= points", name="lots_remaining_in_range"),
        schema=S,
    )
    op.create_index("lots_open", "lots", ["member_id", "earned_at"], schema=S,
                    postgresql_where=sa.text("remaining > 0"))
    op.create_index("lots_expiring", "lots", ["expires_on"], schema=S, postgresql_where=sa.text("remaining > 0"))
    op.create_table(
        "entries",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("entry_id", sa.Text, nullable=False, unique=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("delta", sa.BigInteger, nullable=False),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.Column("entry_type", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source_event_id", sa.Text),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("qualifying", sa.Boolean, nullable=False),
        sa.Column("capped", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("entry_type IN ('earn', 'redeem', 'expire', 'reverse', 'adjust')",
                           name="entries_entry_type"),
        schema=S,
    )
    op.create_index("entries_member", "entries", ["member_id", "seq"], schema=S)
    op.create_table(
        "purchase_points",
        sa.Column("purchase_id", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("earned", sa.BigInteger, nullable=False),
        sa.Column("refunded_fen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reversed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lot_id", sa.Text),
        schema=S,
    )
    op.create_table(
        "refunds",
        sa.Column("purchase_id", sa.Text, primary_key=True),
        sa.Column("refund_id", sa.Text, primary_key=True),
        sa.Column("amount_fen", sa.BigInteger, nullable=False),
        sa.Column("reversed", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_table(
        "behaviour_months",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("month", sa.Date, primary_key=True),
        sa.Column("awarded", sa.BigInteger, nullable=False),
        schema=S,
    )

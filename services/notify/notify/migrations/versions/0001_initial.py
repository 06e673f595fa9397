"""contacts, preferences, notifications; outbox, inbox, idempotency keys

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from shared.migrate import create_shared_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None
S = "notify"


def upgrade() -> None:
    create_shared_tables(op, S)
    op.create_table(
        "contacts",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("phone", sa.Text),
        sa.Column("email", sa.Text),
        sa.Column("consents", JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "preferences",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("locale", sa.Text, nullable=False, server_default="zh-CN"),
        sa.Column("channels", ARRAY(sa.Text), nullable=False),
        sa.Column("quiet_start", sa.Text),
        sa.Column("quiet_end", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "notifications",
        sa.Column("notification_id", sa.Text, primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("locale", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("data", JSONB, nullable=False, server_default="{}"),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("source_event_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("source_event_id", "kind", "channel", name="notifications_once_per_event"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="notifications_status"),
        schema=S,
    )
    op.create_index("notifications_due", "notifications", ["next_attempt_at"], schema=S,
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("notifications_member", "notifications", ["member_id", "created_at"], schema=S)

"""parked_events: events that overtook their member's MemberEnrolled wait here for it

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
S = "notify"


def upgrade() -> None:
    op.create_table(
        "parked_events",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False, unique=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("parked_events_member", "parked_events", ["member_id", "chain_id"], schema=S)


def downgrade() -> None:
    op.drop_table("parked_events", schema=S)

"""audit_log: every change made with an ops or platform key, with its actor, before and after

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from shared.audit import create_audit_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_table(op, "notify")


def downgrade() -> None:
    op.drop_table("audit_log", schema="notify")

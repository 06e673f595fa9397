"""audit_log: every change made with an ops or platform key, with its actor, before and after

Revision ID: 0005
Revises: 0004
"""

from alembic import op

from shared.audit import create_audit_table

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_audit_table(op, "benefits")


def downgrade() -> None:
    op.drop_table("audit_log", schema="benefits")

"""dead_letters: what the consumer dead-lettered, for operators to list, re-drive and discard

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from shared.dead_letters import create_dead_letters_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_dead_letters_table(op, "benefits")


def downgrade() -> None:
    op.drop_table("dead_letters", schema="benefits")

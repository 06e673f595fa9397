"""dead_letters: what the consumer dead-lettered, for operators to list, re-drive and discard

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from shared.dead_letters import create_dead_letters_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_dead_letters_table(op, "tiering")


def downgrade() -> None:
    op.drop_table("dead_letters", schema="tiering")

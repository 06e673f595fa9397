"""outbox, inbox, idempotency keys

Revision ID: 0001
Revises:
"""
from alembic import op

from shared.migrate import create_shared_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_shared_tables(op, "points")

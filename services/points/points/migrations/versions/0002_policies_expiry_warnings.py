"""chain policies (copied from PolicyChanged), an index of lots still to announce before expiry

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from shared.policy_store import create_policy_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
S = "points"


def upgrade() -> None:
    create_policy_table(op, S)
    # the expiry warning pass claims lots from here (FOR UPDATE SKIP LOCKED); once announced they leave it
    op.create_index("lots_to_warn", "lots", ["expires_on"], schema=S,
                    postgresql_where=sa.text("remaining > 0 AND expiry_notified_at IS NULL"))

"""contacts.erased_at: an erased member's contact is kept as a tombstone (no name, phone or email)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
S = "notify"


def upgrade() -> None:
    op.add_column("contacts", sa.Column("erased_at", sa.DateTime(timezone=True)), schema=S)


def downgrade() -> None:
    op.drop_column("contacts", "erased_at", schema=S)

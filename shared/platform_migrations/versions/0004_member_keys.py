"""member_keys: each member's data key, wrapped under the chain's key-encryption key (SPEC §8
crypto-shredding; deleting a row makes the member's sealed contact details unreadable everywhere)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
S = "platform"


def upgrade() -> None:
    op.create_table(
        "member_keys",
        sa.Column("member_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("wrapped_key", sa.Text, nullable=False),
        sa.Column("kek_version", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_index("member_keys_chain", "member_keys", ["chain_id"], schema=S)


def downgrade() -> None:
    op.drop_table("member_keys", schema=S)

"""personal data (SPEC §8): the consent history, and erasure (members.erased_at; the personal columns
become nullable, an erased member's are NULL)

Existing members get one history row per purpose from their current consents (source "app", policy
version "unknown": what was agreed to before the history was kept is not known).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
S = "enrollment"


def upgrade() -> None:
    op.add_column("members", sa.Column("erased_at", sa.DateTime(timezone=True)), schema=S)
    for column in ("phone", "name", "birthday"):
        op.alter_column("members", column, nullable=True, schema=S)
    op.create_table(
        "consent_records",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("purpose", sa.Text, nullable=False),
        sa.Column("granted", sa.Boolean, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("policy_version", sa.Text, nullable=False),
        schema=S,
    )
    op.create_index("consent_records_member", "consent_records", ["member_id", "seq"], schema=S)
    for purpose in ("marketing", "sms", "email"):
        op.execute(
            f"INSERT INTO {S}.consent_records (member_id, chain_id, purpose, granted, at, source, policy_version) "
            f"SELECT member_id, chain_id, '{purpose}', coalesce((consents->>'{purpose}')::boolean, false), "
            f"enrolled_at, 'app', 'unknown' FROM {S}.members ORDER BY enrolled_at"
        )


def downgrade() -> None:
    op.drop_table("consent_records", schema=S)
    op.drop_column("members", "erased_at", schema=S)

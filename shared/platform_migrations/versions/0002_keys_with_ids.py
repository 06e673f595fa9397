"""keys with ids, clinic binding, expiry and rotation: platform.keys + platform.key_secrets

Every existing api_keys row becomes a key (its id derived from its hash) with that one secret;
revoked keys stay revoked.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
S = "platform"


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, sa.ForeignKey("platform.chains.chain_id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False),
        sa.Column("clinic_id", sa.Text),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("created_by", sa.Text),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("keys_chain", "keys", ["chain_id", "created_at"], schema=S)
    op.create_table(
        "key_secrets",
        sa.Column("key_hash", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, sa.ForeignKey("platform.keys.key_id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("valid_until", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("key_secrets_key", "key_secrets", ["key_id"], schema=S)
    op.execute(
        "INSERT INTO platform.keys (key_id, chain_id, name, scopes, prefix, created_at, revoked_at) "
        "SELECT 'key_' || left(key_hash, 16), chain_id, name, scopes, '(legacy)', created_at, revoked_at "
        "FROM platform.api_keys"
    )
    op.execute(
        "INSERT INTO platform.key_secrets (key_hash, key_id, created_at) "
        "SELECT key_hash, 'key_' || left(key_hash, 16), created_at FROM platform.api_keys"
    )
    op.drop_table("api_keys", schema=S)


def downgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_hash", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, sa.ForeignKey("platform.chains.chain_id"), nullable=False),
        sa.Column("scopes", ARRAY(sa.Text), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.execute(
        "INSERT INTO platform.api_keys (key_hash, chain_id, scopes, name, created_at, revoked_at) "
        "SELECT s.key_hash, k.chain_id, k.scopes, k.name, s.created_at, k.revoked_at "
        "FROM platform.key_secrets s JOIN platform.keys k USING (key_id)"
    )
    op.drop_table("key_secrets", schema=S)
    op.drop_table("keys", schema=S)

"""idempotency keys per API key: key_id joins the primary key (chain, key id, scope, key)

Revision ID: 0005
Revises: 0004
"""

from alembic import op

from shared.migrate import scope_idempotency_keys_by_key

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    scope_idempotency_keys_by_key(op, "tiering")


def downgrade() -> None:
    op.execute("DELETE FROM tiering.idempotency_keys WHERE key_id <> ''")
    op.execute("ALTER TABLE tiering.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey")
    op.execute(
        "ALTER TABLE tiering.idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (chain_id, scope, key)"
    )
    op.drop_column("idempotency_keys", "key_id", schema="tiering")

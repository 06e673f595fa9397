"""idempotency keys per API key: key_id joins the primary key (chain, key id, scope, key)

Revision ID: 0006
Revises: 0005
"""

from alembic import op

from shared.migrate import scope_idempotency_keys_by_key

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    scope_idempotency_keys_by_key(op, "benefits")


def downgrade() -> None:
    op.execute("DELETE FROM benefits.idempotency_keys WHERE key_id <> ''")
    op.execute("ALTER TABLE benefits.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey")
    op.execute(
        "ALTER TABLE benefits.idempotency_keys ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (chain_id, scope, key)"
    )
    op.drop_column("idempotency_keys", "key_id", schema="benefits")

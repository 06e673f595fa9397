"""webhook secrets sealed: every plaintext platform.chains.webhook_secret is sealed with AES-256-GCM

The key is MEMBERSHIP_SECRETS_KEY (the settings the migration runs with); values already sealed
(``v1:...``) are left alone, so the migration is safe to run while old rows and new ones coexist.
Downgrade opens them again.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import context, op

from shared.secret_box import SecretBox, is_sealed
from shared.settings import Settings

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
S = "platform"

chains = sa.table("chains", sa.column("chain_id", sa.Text), sa.column("webhook_secret", sa.Text), schema=S)


def _box() -> SecretBox:
    settings = context.config.attributes.get("settings")
    return SecretBox.from_settings(settings if isinstance(settings, Settings) else Settings())


def upgrade() -> None:
    box = _box()
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(chains.c.chain_id, chains.c.webhook_secret)
        .where(chains.c.webhook_secret.is_not(None))
        .with_for_update()
    ).all()
    for chain_id, secret in rows:
        if not is_sealed(secret):
            bind.execute(
                chains.update()
                .where(chains.c.chain_id == chain_id)
                .values(webhook_secret=box.seal(secret, context=chain_id))
            )


def downgrade() -> None:
    box = _box()
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(chains.c.chain_id, chains.c.webhook_secret).where(chains.c.webhook_secret.is_not(None))
    ).all()
    for chain_id, secret in rows:
        if is_sealed(secret):
            bind.execute(
                chains.update()
                .where(chains.c.chain_id == chain_id)
                .values(webhook_secret=box.open(secret, context=chain_id))
            )

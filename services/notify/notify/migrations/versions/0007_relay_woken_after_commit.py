"""wake the relay after commit: drop the outbox's NOTIFY trigger (it serialised every commit)

Revision ID: 0007
Revises: 0006
"""

from alembic import op

from shared.migrate import drop_outbox_notify_trigger, restore_outbox_notify_trigger

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    drop_outbox_notify_trigger(op, "notify")


def downgrade() -> None:
    restore_outbox_notify_trigger(op, "notify")

"""wake the relay after commit: drop the outbox's NOTIFY trigger (it serialised every commit)

Revision ID: 0008
Revises: 0007
"""

from alembic import op

from shared.migrate import drop_outbox_notify_trigger, restore_outbox_notify_trigger

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    drop_outbox_notify_trigger(op, "enrollment")


def downgrade() -> None:
    restore_outbox_notify_trigger(op, "enrollment")

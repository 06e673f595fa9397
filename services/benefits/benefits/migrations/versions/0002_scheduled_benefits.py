"""policy copies, member birthdays, period-keyed grants (birthday vouchers, tier-years, care packs)

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
S = "benefits"


def upgrade() -> None:
    create_policy_table(op, S)
    op.add_column("members", sa.Column("birthday", sa.Date), schema=S)
    op.create_index("members_birth_month", "members", ["chain_id", sa.text("EXTRACT(month FROM birthday)")],
                    postgresql_where=sa.text("birthday IS NOT NULL"), schema=S)
    op.add_column("entitlements", sa.Column("period", sa.Text), schema=S)
    op.create_unique_constraint("entitlements_once_per_period", "entitlements", ["member_id", "code", "period"],
                                schema=S)
    # period-keyed grants (care packs, one per purchase) may be active side by side
    op.drop_index("entitlements_one_active_per_code", "entitlements", schema=S)
    op.create_index("entitlements_one_active_per_code", "entitlements", ["member_id", "code"], unique=True,
                    postgresql_where=sa.text("tier IS NOT NULL AND status = 'active' AND period IS NULL"), schema=S)

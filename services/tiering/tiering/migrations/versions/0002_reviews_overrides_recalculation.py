"""reviews, overrides, recalculation jobs, explainable history

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
S = "tiering"


def upgrade() -> None:
    # an ops override: the tier it holds the member at, why, and until when
    op.add_column("members", sa.Column("override_tier", sa.Text), schema=S)
    op.add_column("members", sa.Column("override_reason", sa.Text), schema=S)
    op.add_column("members", sa.Column("override_until", sa.DateTime(timezone=True)), schema=S)
    op.create_index("members_override_due", "members", ["override_until"], schema=S,
                    postgresql_where=sa.text("override_until IS NOT NULL"))
    # recalculation walks a chain's members in member_id order, one keyset batch at a time
    op.create_index("members_chain_member", "members", ["chain_id", "member_id"], schema=S)
    # explain: the review date each change set, and the operator's reason for an override
    op.add_column("tier_history", sa.Column("review_at", sa.DateTime(timezone=True)), schema=S)
    op.add_column("tier_history", sa.Column("note", sa.Text), schema=S)
    op.create_index("tier_history_member_time", "tier_history", ["member_id", "effective_at"], schema=S)
    op.create_table(
        "recalc_jobs",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("chain_id", sa.Text, nullable=False),
        sa.Column("policy_version", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("processed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("moved", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cursor", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('running', 'done', 'failed')", name="recalc_jobs_status"),
        schema=S,
    )
    op.create_index("recalc_jobs_running", "recalc_jobs", ["started_at"], schema=S,
                    postgresql_where=sa.text("status = 'running'"))

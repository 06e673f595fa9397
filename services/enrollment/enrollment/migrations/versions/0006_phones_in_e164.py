"""members.phone in E.164 (+86...): every written form of a number is one member; consents never JSON null

Revision ID: 0006
Revises: 0005

Rows written before phones were normalised hold national (13812345678) or international (008613812345678,
+441234567890) forms. Each becomes E.164 unless another member of the chain already holds that E.164 form
(two members enrolled under two forms of one number): the later one keeps its old form, logged here, for
an operator to merge. Numbers no rule can read stay as they are. A PATCH with ``consents: null`` used to
store JSON null; such rows get "no consent", what a member without consents has.
"""

import logging

import sqlalchemy as sa
from alembic import op

from shared.phones import InvalidPhone, normalize_phone

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.enrollment.0005")


def upgrade() -> None:
    bind = op.get_bind()
    # the common case in one statement: a bare mainland mobile whose +86 form nobody in its chain holds
    bind.execute(
        sa.text(
            """UPDATE enrollment.members m SET phone = '+86' || m.phone
               WHERE m.phone ~ '^1[3-9][0-9]{9}$'
                 AND NOT EXISTS (SELECT 1 FROM enrollment.members o
                                 WHERE o.chain_id = m.chain_id AND o.phone = '+86' || m.phone)"""
        )
    )
    rows = bind.execute(
        sa.text(
            "SELECT member_id, chain_id, phone FROM enrollment.members"
            " WHERE phone NOT LIKE '+%' OR phone ~ '[^+0-9]' ORDER BY enrolled_at, member_id"
        )
    ).all()
    held = {
        (r.chain_id, r.phone)
        for r in bind.execute(sa.text("SELECT chain_id, phone FROM enrollment.members WHERE phone ~ '^[+][0-9]+$'"))
    }
    for r in rows:
        try:
            e164 = normalize_phone(r.phone)
        except InvalidPhone:
            log.warning("member %s: phone not readable as a number, left as it is", r.member_id)
            continue
        if e164 == r.phone:
            continue
        if (r.chain_id, e164) in held:
            log.warning("member %s: another member of the chain holds this number; left as it is", r.member_id)
            continue
        held.add((r.chain_id, e164))
        bind.execute(
            sa.text("UPDATE enrollment.members SET phone = :p WHERE member_id = :m"), {"p": e164, "m": r.member_id}
        )
    bind.execute(
        sa.text(
            """UPDATE enrollment.members
               SET consents = '{"marketing": false, "sms": false, "email": false}'::jsonb
               WHERE jsonb_typeof(consents) IS DISTINCT FROM 'object'"""
        )
    )


def downgrade() -> None:
    """E.164 stays: the earlier code normalised +86 numbers to the national form, which it still reads."""

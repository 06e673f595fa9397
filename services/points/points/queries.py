"""Reads for points' API: a member's points and ledger, the chain's programme version."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sqlalchemy import select

from shared.db import UnitOfWork
from shared.problems import InvalidRequest, NotFound

from . import schemas
from .store import SqlStore
from .tables import entries, members, policies


async def _member_of_chain(uow: UnitOfWork, *, chain_id: str, member_id: str) -> Any:
    member = (await uow.execute(select(members).where(members.c.member_id == member_id))).first()
    if member is None or member.chain_id != chain_id:
        raise NotFound("No such member.")
    return member


async def points_of(uow: UnitOfWork, *, chain_id: str, member_id: str) -> schemas.PointsSummary:
    account = await SqlStore(uow).account(member_id=member_id)
    if account is None or account.member.chain_id != chain_id:
        raise NotFound("No such member.")
    wallet = account.wallet
    now = uow.now()
    return schemas.PointsSummary(
        balance=wallet.balance,
        available=wallet.available(now),
        pending=wallet.pending(now),
        lots=[
            schemas.LotView(
                lot_id=lot.lot_id,
                remaining=lot.remaining,
                earned_at=lot.earned_at,
                expires_on=lot.expires_on,
                available_at=lot.available_at,
            )
            for lot in wallet.open_lots()
        ],
        expiring=[schemas.ExpiringView(points=g.points, expires_on=g.expires_on) for g in wallet.expiring(now)],
    )


async def policy_view(uow: UnitOfWork, *, chain_id: str) -> schemas.PolicyView:
    policy = await policies.current(uow.session, chain_id)
    return schemas.PolicyView(version=policy.version, policy=policy.model_dump(mode="json"))


_CURSOR_PREFIX = "e1:"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError("not a ledger cursor")
        seq = int(raw.removeprefix(_CURSOR_PREFIX))
        if not 0 < seq < 2**63:
            raise ValueError("not a ledger cursor")
        return seq
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(
            "The cursor is not one this API returned.",
            errors=[{"location": ["query", "cursor"], "message": "invalid cursor", "type": "value_error"}],
        ) from exc


async def ledger_of(
    uow: UnitOfWork, *, chain_id: str, member_id: str, cursor: str | None, limit: int
) -> schemas.LedgerPage:
    """A page of the member's entries, newest first; the cursor is the last entry's position."""
    before = decode_cursor(cursor) if cursor else None
    await _member_of_chain(uow, chain_id=chain_id, member_id=member_id)
    stmt = select(entries).where(entries.c.member_id == member_id)
    if before is not None:
        stmt = stmt.where(entries.c.seq < before)
    rows = (await uow.execute(stmt.order_by(entries.c.seq.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    return schemas.LedgerPage(
        items=[
            schemas.LedgerEntry(
                entry_id=r.entry_id,
                member_id=r.member_id,
                delta=r.delta,
                balance=r.balance,
                entry_type=r.entry_type,
                reason=r.reason,
                source_event_id=r.source_event_id,
                occurred_at=r.occurred_at,
                qualifying=r.qualifying,
                capped=r.capped,
                created_at=r.created_at,
            )
            for r in page
        ],
        next_cursor=encode_cursor(page[-1].seq) if len(rows) > limit else None,
    )

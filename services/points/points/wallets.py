"""The one path of every change of a member's points, for event handlers, commands and jobs alike.

Lock the member's row and load the open lots into a :class:`domain.Wallet` (``store.Account``),
let the domain change it, then :func:`post` writes the lots, the ledger entry and the balance
and publishes ``PointsChanged``, all in the caller's transaction. The row lock makes one
member's changes serial, so the balance after each entry is exact even with API requests and
the consumer racing.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from shared.db import Unit
from shared.events import EntryType, ExpiringPoints, PendingPoints, PointsChanged, PointsSnapshot

from . import domain
from .store import Entry, Member, store_of


def held_points(wallet: domain.Wallet, at: datetime) -> PointsSnapshot:
    """The member's points as of ``at``, as every PointsChanged carries them (and a rebuild's snapshot)."""
    return PointsSnapshot(
        balance=wallet.balance,
        available=wallet.available(at),
        pending=wallet.pending(at),
        expiring=[ExpiringPoints(points=g.points, expires_on=g.expires_on) for g in wallet.expiring(at)],
        pending_until=[PendingPoints(points=n, available_at=when) for when, n in wallet.pending_until(at)],
    )


async def post(
    uow: Unit,
    *,
    member: Member,
    wallet: domain.Wallet,
    delta: int,
    entry_type: EntryType,
    reason: str,
    occurred_at: datetime,
    qualifying: bool,
    source_event_id: str | None = None,
    capped: int = 0,
    as_of: datetime | None = None,
) -> str:
    """Write the wallet's lot changes, one ledger entry and the new balance; publish PointsChanged.

    ``wallet.balance`` is already the balance after ``delta``: the ledger's ``balance``
    column is always the sum of the member's deltas up to and including the entry.
    PointsChanged carries the member's available, pending and expiring points as of ``as_of``
    (default now), computed from the wallet already in hand: the status view's copy of them
    is as of the member's last points change.
    """
    store = store_of(uow)
    entry_id = str(uuid.uuid4())
    # queued, not executed: a consumer batch writes each table once (see UnitOfWork.insert_later)
    await store.add_lots(member_id=member.member_id, entry_id=entry_id, created=wallet.created)
    await store.update_lots(changed=list(wallet.changed.values()))
    now = uow.now()
    await store.add_entry(
        entry=Entry(
            entry_id=entry_id,
            member_id=member.member_id,
            chain_id=member.chain_id,
            delta=delta,
            balance=wallet.balance,
            entry_type=entry_type,
            reason=reason,
            source_event_id=source_event_id,
            occurred_at=occurred_at,
            qualifying=qualifying,
            capped=capped,
            created_at=now,
        )
    )
    if delta != 0:
        await store.set_balance(member_id=member.member_id, balance=wallet.balance, at=now)
        held = held_points(wallet, as_of or now)
        uow.publish(
            PointsChanged(
                entry_id=entry_id,
                delta=delta,
                balance=held.balance,
                entry_type=entry_type,
                reason=reason,
                source_event_id=source_event_id,
                occurred_at=occurred_at,
                qualifying=qualifying,
                available=held.available,
                pending=held.pending,
                expiring=held.expiring,
                pending_until=held.pending_until,
            ),
            member_id=member.member_id,
            chain_id=member.chain_id,
        )
    wallet.created.clear()
    wallet.changed.clear()
    return entry_id

"""Points' scheduled job: expiry (announce the lots expiring soon, take away the expired ones).

The worker's schedule runs it for every chain as of now; ``POST /v1/points/expiry/run`` runs it
for the caller's chain as of any instant.

The expiry rule is the domain's (:func:`domain.has_expired`, :func:`domain.in_warning_window`):
the SQL here only selects candidates with the day bounds the domain computes
(:func:`domain.first_unexpired_day`, :func:`domain.warning_window`), and the wallet decides what
expires (:meth:`domain.Wallet.expire`). ``tests/integration/test_points_expiry_rule.py`` feeds
random lots and instants to both and checks they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, select, update

from shared.api import ServiceContext
from shared.db import Database, UnitOfWork
from shared.events import PointsExpiringSoon
from shared.platform import chain_timezone
from shared.service import JobRun

from . import domain
from .store import lot_of, member_of
from .tables import lots, members, policies
from .wallets import post

EXPIRY_BATCH = 500


@dataclass
class ExpiryRun:
    """What one expiry pass did: lots announced, lots (and points) taken away, as of when."""

    as_of: datetime
    warned: int = 0
    expired: int = 0
    expired_points: int = 0


async def expire_points(ctx: ServiceContext, run: JobRun) -> ExpiryRun:
    """Announce the lots expiring soon, then take away the expired ones, as of ``run.as_of``.

    Safe on several replicas, and to run again: a lot is announced in the transaction that
    marks it announced (claimed FOR UPDATE SKIP LOCKED), and an expired lot is emptied under
    its member's row lock, so neither can happen twice. Only a lot's ``remaining`` expires:
    what redemptions spent from it is not taken again, and an empty lot is neither announced
    nor expired. Days are the chain's local days.
    """
    done = ExpiryRun(run.as_of)
    for chain_id in run.chain_ids:
        while await warn_expiring_lots(ctx.db, chain_id=chain_id, run=done) == EXPIRY_BATCH:
            pass
        while await expire_lapsed_lots(ctx.db, chain_id=chain_id, run=done) == EXPIRY_BATCH:
            pass
    return done


def lots_to_announce(chain_id: str, first_day: date, last_day: date) -> Select[Any]:
    """A batch of the chain's open, unannounced lots expiring between the two days (inclusive),
    claimed for announcing."""
    # SKIP LOCKED: a lot another replica is announcing, or a redemption is changing, is left
    # for the next run rather than waited for (and announced twice)
    return (
        select(lots.c.lot_id, lots.c.member_id, lots.c.remaining, lots.c.expires_on)
        .join(members, members.c.member_id == lots.c.member_id)
        .where(
            members.c.chain_id == chain_id,
            lots.c.remaining > 0,
            lots.c.expiry_notified_at.is_(None),
            lots.c.expires_on >= first_day,
            lots.c.expires_on <= last_day,
        )
        .order_by(lots.c.expires_on, lots.c.lot_id)
        .limit(EXPIRY_BATCH)
        .with_for_update(of=lots, skip_locked=True)
    )


def members_with_lapsed_lots(chain_id: str, first_unexpired_day: date) -> Select[Any]:
    """A batch of the chain's members holding points in a lot that expired before the given day,
    claimed (their row locked) for the expiry."""
    lapsed = select(lots.c.member_id).where(lots.c.remaining > 0, lots.c.expires_on < first_unexpired_day)
    # the member row is every points change's lock: a member busy elsewhere is skipped, not waited
    # for, and picked up by the next run
    return (
        select(members)
        .where(members.c.chain_id == chain_id, members.c.member_id.in_(lapsed))
        .order_by(members.c.member_id)
        .limit(EXPIRY_BATCH)
        .with_for_update(skip_locked=True)
    )


async def warn_expiring_lots(db: Database, *, chain_id: str, run: ExpiryRun) -> int:
    """Publish PointsExpiringSoon for a batch of the chain's unannounced lots inside the notice window."""
    async with db.unit_of_work() as uow:
        tz = await chain_timezone(uow.session, chain_id)
        policy = await policies.current(uow.session, chain_id)
        first_day, last_day = domain.warning_window(run.as_of, tz, policy.expiring_notice_days)
        claimed = (await uow.execute(lots_to_announce(chain_id, first_day, last_day))).all()
        for lot in claimed:
            uow.publish(
                PointsExpiringSoon(points=lot.remaining, expires_on=lot.expires_on, lot_id=lot.lot_id),
                member_id=lot.member_id,
                chain_id=chain_id,
            )
        if claimed:
            await uow.execute(
                update(lots)
                .where(lots.c.lot_id.in_([lot.lot_id for lot in claimed]))
                .values(expiry_notified_at=uow.now())
            )
    run.warned += len(claimed)
    return len(claimed)


async def _wallets_of(uow: UnitOfWork, locked: list[Any], tz: ZoneInfo) -> dict[str, domain.Wallet]:
    """The wallets of several locked members of one chain, from one query."""
    held: dict[str, list[domain.Lot]] = {m.member_id: [] for m in locked}
    rows = await uow.execute(select(lots).where(lots.c.member_id.in_(list(held)), lots.c.remaining > 0))
    for r in rows:
        held[r.member_id].append(lot_of(r))
    return {m.member_id: domain.Wallet(balance=m.balance, lots=held[m.member_id], tz=tz) for m in locked}


async def expire_lapsed_lots(db: Database, *, chain_id: str, run: ExpiryRun) -> int:
    """Take away what is left in a batch of members' lots whose expiry day has passed: one ``expire``
    entry (and PointsChanged) per member. Returns how many members were claimed."""
    async with db.unit_of_work() as uow:
        tz = await chain_timezone(uow.session, chain_id)
        claimed = (
            await uow.execute(members_with_lapsed_lots(chain_id, domain.first_unexpired_day(run.as_of, tz)))
        ).all()
        wallets = await _wallets_of(uow, claimed, tz) if claimed else {}
        for row in claimed:
            wallet = wallets[row.member_id]
            taken = wallet.expire(run.as_of)
            points = sum(n for _, n in taken)
            if points:
                await post(
                    uow,
                    member=member_of(row),
                    wallet=wallet,
                    delta=-points,
                    entry_type="expire",
                    reason="expiry",
                    occurred_at=run.as_of,
                    qualifying=False,
                    as_of=run.as_of,
                )
            run.expired += len(taken)
            run.expired_points += points
    return len(claimed)

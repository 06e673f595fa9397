"""The points tables as the event handlers (and the ledger's :func:`wallets.post`) use them.

:class:`PointsStore` names what the handlers do to the tables in the programme's words;
:class:`SqlStore` is the real one, over the unit of work's transaction (the fast handler tests
provide an in-memory one instead). The row lock on ``members`` is every points change's lock:
an account is loaded ``FOR UPDATE``, so one member's changes are serial and the balance after
each entry is exact even with API requests and the consumer racing.

Writes the ledger makes for every change (lots, entries, balances) are queued with
``insert_later``/``update_later``: a consumer batch writes each table once, not once per event.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import Unit, UnitOfWork
from shared.events import CloudEvent, EntryType, PolicyChanged
from shared.platform import chain_timezone
from shared.policy import Policy

from . import domain
from .tables import behaviour_months, entries, lots, members, policies, purchase_points, refunds


@dataclass(frozen=True)
class Member:
    """A member as points knows them (MemberEnrolled), with the balance they had when loaded."""

    member_id: str
    chain_id: str
    enrolled_at: datetime
    balance: int = 0


@dataclass
class Account:
    """A member and their wallet; loaded under the member's row lock for any change."""

    member: Member
    wallet: domain.Wallet


@dataclass(frozen=True)
class PurchaseEarning:
    """What a purchase earned (even 0) and how much of it refunds have reversed so far."""

    purchase_id: str
    member_id: str
    amount_fen: int
    earned: int
    lot_id: str | None
    refunded_fen: int = 0
    reversed: int = 0


@dataclass(frozen=True)
class Refund:
    purchase_id: str
    refund_id: str
    amount_fen: int
    reversed: int  # the points this refund reversed
    occurred_at: datetime


@dataclass(frozen=True)
class Entry:
    """One ledger row: ``balance`` is the sum of the member's deltas up to and including it."""

    entry_id: str
    member_id: str
    chain_id: str
    delta: int
    balance: int
    entry_type: EntryType
    reason: str
    source_event_id: str | None
    occurred_at: datetime
    qualifying: bool
    capped: int
    created_at: datetime


class PointsStore(abc.ABC):
    """The table access of points' event handlers, in the transaction of the unit of work."""

    # ---- members and their wallets

    @abc.abstractmethod
    async def add_member(self, *, member_id: str, chain_id: str, enrolled_at: datetime) -> str:
        """Know an enrolled member (balance 0); knowing them already changes nothing. Returns the chain
        the member is known in (another than ``chain_id``: a forged event)."""

    @abc.abstractmethod
    async def locked_account(self, *, member_id: str) -> Account | None:
        """Lock the member's row and load their open lots; None for a member never enrolled."""

    @abc.abstractmethod
    async def locked_accounts(self, *, member_ids: Sequence[str]) -> list[Account]:
        """:meth:`locked_account` for many members in a few statements, locking in member order;
        members never enrolled are left out."""

    # ---- the programme

    @abc.abstractmethod
    async def policy(self, *, chain_id: str) -> Policy:
        """The chain's current programme: what tiering last published (the default until then)."""

    @abc.abstractmethod
    async def keep_policy(self, *, change: CloudEvent[PolicyChanged]) -> None:
        """Keep a programme version tiering published; what is processed from now on applies it."""

    # ---- purchases and refunds

    @abc.abstractmethod
    async def earned_purchases(self, *, purchase_ids: Sequence[str]) -> set[str]:
        """Which of these purchases already have their earning recorded."""

    @abc.abstractmethod
    async def add_purchase_earning(self, *, earning: PurchaseEarning) -> None:
        """Record a purchase's earning known to be new (the batch loaded which ones were not)."""

    @abc.abstractmethod
    async def add_purchase_earning_if_new(self, *, earning: PurchaseEarning) -> bool:
        """Record a purchase's earning unless one was recorded before; False then."""

    @abc.abstractmethod
    async def purchase_earning(self, *, purchase_id: str) -> PurchaseEarning | None:
        """What the purchase earned and what its refunds reversed so far (None: unknown purchase)."""

    @abc.abstractmethod
    async def add_refund(self, *, refund: Refund) -> bool:
        """Record a refund and add it to its purchase's refunded amount and reversed points, once:
        False (and nothing changed) when this refund was recorded before."""

    # ---- the behaviour cap

    @abc.abstractmethod
    async def behaviour_awarded(self, *, member_id: str, month: date) -> int:
        """Behaviour points awarded to the member in the (local) calendar month so far."""

    @abc.abstractmethod
    async def add_behaviour_award(self, *, member_id: str, month: date, points: int) -> None:
        """Count ``points`` more behaviour points awarded in the month."""

    # ---- the ledger (written by wallets.post)

    @abc.abstractmethod
    async def add_lots(self, *, member_id: str, entry_id: str, created: Sequence[domain.Lot]) -> None:
        """New lots, created by the entry ``entry_id``, as they are now."""

    @abc.abstractmethod
    async def update_lots(self, *, changed: Sequence[domain.Lot]) -> None:
        """Stored lots whose ``remaining`` changed."""

    @abc.abstractmethod
    async def add_entry(self, *, entry: Entry) -> None:
        """A ledger entry."""

    @abc.abstractmethod
    async def set_balance(self, *, member_id: str, balance: int, at: datetime) -> None:
        """The member's balance after their latest entry."""


def _store_key() -> type[PointsStore]:
    # uow.state is keyed by the abstract class; mypy rejects an abstract class literal where
    # type[T] is expected (python/mypy#4717), not one returned as type[PointsStore]
    return PointsStore


def store_of(uow: Unit) -> PointsStore:
    """The transaction's store: the real tables, unless a test provided another."""
    return uow.state(_store_key(), SqlStore)


def lot_of(row: Any) -> domain.Lot:
    return domain.Lot(
        lot_id=row.lot_id,
        points=row.points,
        remaining=row.remaining,
        earned_at=row.earned_at,
        available_at=row.available_at,
        expires_on=row.expires_on,
        qualifying=row.qualifying,
        purchase_id=row.purchase_id,
        expiry_notified=row.expiry_notified_at is not None,
    )


def member_of(row: Any) -> Member:
    return Member(member_id=row.member_id, chain_id=row.chain_id, enrolled_at=row.enrolled_at, balance=row.balance)


class SqlStore(PointsStore):
    """The points schema, through the unit of work (its queued writes are flushed before any
    statement that reads their table, so reads in the transaction see them)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def add_member(self, *, member_id: str, chain_id: str, enrolled_at: datetime) -> str:
        inserted = (
            await self.uow.execute(
                pg_insert(members)
                .values(
                    member_id=member_id,
                    chain_id=chain_id,
                    enrolled_at=enrolled_at,
                    balance=0,
                )
                .on_conflict_do_nothing()
                .returning(members.c.chain_id)
            )
        ).first()
        if inserted is not None:
            return chain_id
        known = await self.uow.session.scalar(select(members.c.chain_id).where(members.c.member_id == member_id))
        return str(known)

    async def _member(self, member_id: str, *, lock: bool) -> Member | None:
        stmt = select(members).where(members.c.member_id == member_id)
        row = (await self.uow.execute(stmt.with_for_update() if lock else stmt)).first()
        return member_of(row) if row is not None else None

    async def _wallet_of(self, member: Member) -> domain.Wallet:
        rows = (
            await self.uow.execute(
                select(lots)
                .where(lots.c.member_id == member.member_id, lots.c.remaining > 0)
                .order_by(lots.c.earned_at, lots.c.lot_id)
            )
        ).all()
        tz = await chain_timezone(self.uow.session, member.chain_id)
        return domain.Wallet(balance=member.balance, lots=[lot_of(r) for r in rows], tz=tz)

    async def locked_account(self, *, member_id: str) -> Account | None:
        member = await self._member(member_id, lock=True)
        return Account(member, await self._wallet_of(member)) if member is not None else None

    async def account(self, *, member_id: str) -> Account | None:
        """The member and their wallet as committed, without locking (for reads)."""
        member = await self._member(member_id, lock=False)
        return Account(member, await self._wallet_of(member)) if member is not None else None

    async def locked_accounts(self, *, member_ids: Sequence[str]) -> list[Account]:
        # one query locks every member, in member order (so two batches lock in the same order and
        # cannot deadlock), one more loads all their open lots
        locked = (
            await self.uow.execute(
                select(members)
                .where(members.c.member_id.in_(list(member_ids)))
                .order_by(members.c.member_id)
                .with_for_update()
            )
        ).all()
        held: dict[str, list[domain.Lot]] = {m.member_id: [] for m in locked}
        if held:
            for r in await self.uow.execute(
                select(lots)
                .where(lots.c.member_id.in_(list(held)), lots.c.remaining > 0)
                .order_by(lots.c.earned_at, lots.c.lot_id)
            ):
                held[r.member_id].append(lot_of(r))
        accounts = []
        for m in locked:
            tz = await chain_timezone(self.uow.session, m.chain_id)
            accounts.append(Account(member_of(m), domain.Wallet(balance=m.balance, lots=held[m.member_id], tz=tz)))
        return accounts

    async def policy(self, *, chain_id: str) -> Policy:
        # a change applies to the events processed after it; entries already recorded are never recomputed
        return await policies.current(self.uow.session, chain_id)

    async def keep_policy(self, *, change: CloudEvent[PolicyChanged]) -> None:
        await policies.on_policy_changed(change, self.uow)

    async def earned_purchases(self, *, purchase_ids: Sequence[str]) -> set[str]:
        return set(
            (
                await self.uow.execute(
                    select(purchase_points.c.purchase_id).where(purchase_points.c.purchase_id.in_(list(purchase_ids)))
                )
            ).scalars()
        )

    @staticmethod
    def _earning_row(earning: PurchaseEarning) -> dict[str, Any]:
        return {
            "purchase_id": earning.purchase_id,
            "member_id": earning.member_id,
            "amount_fen": earning.amount_fen,
            "earned": earning.earned,
            "lot_id": earning.lot_id,
        }

    async def add_purchase_earning(self, *, earning: PurchaseEarning) -> None:
        self.uow.insert_later(purchase_points, self._earning_row(earning))

    async def add_purchase_earning_if_new(self, *, earning: PurchaseEarning) -> bool:
        # the primary key makes a second delivery of the purchase (under another event id) a no-op
        first = (
            await self.uow.execute(
                pg_insert(purchase_points)
                .values(**self._earning_row(earning))
                .on_conflict_do_nothing()
                .returning(purchase_points.c.purchase_id)
            )
        ).first()
        return first is not None

    async def purchase_earning(self, *, purchase_id: str) -> PurchaseEarning | None:
        row = (
            await self.uow.execute(select(purchase_points).where(purchase_points.c.purchase_id == purchase_id))
        ).first()
        if row is None:
            return None
        return PurchaseEarning(
            purchase_id=row.purchase_id,
            member_id=row.member_id,
            amount_fen=row.amount_fen,
            earned=row.earned,
            lot_id=row.lot_id,
            refunded_fen=row.refunded_fen,
            reversed=row.reversed,
        )

    async def add_refund(self, *, refund: Refund) -> bool:
        first = (
            await self.uow.execute(
                pg_insert(refunds)
                .values(
                    purchase_id=refund.purchase_id,
                    refund_id=refund.refund_id,
                    amount_fen=refund.amount_fen,
                    reversed=refund.reversed,
                    occurred_at=refund.occurred_at,
                )
                .on_conflict_do_nothing()
                .returning(refunds.c.refund_id)
            )
        ).first()
        if first is None:
            return False  # this refund was reversed before
        await self.uow.execute(
            update(purchase_points)
            .where(purchase_points.c.purchase_id == refund.purchase_id)
            .values(
                refunded_fen=purchase_points.c.refunded_fen + refund.amount_fen,
                reversed=purchase_points.c.reversed + refund.reversed,
            )
        )
        return True

    async def behaviour_awarded(self, *, member_id: str, month: date) -> int:
        key = (behaviour_months.c.member_id == member_id, behaviour_months.c.month == month)
        awarded: int | None = await self.uow.session.scalar(select(behaviour_months.c.awarded).where(*key))
        return awarded or 0

    async def add_behaviour_award(self, *, member_id: str, month: date, points: int) -> None:
        await self.uow.execute(
            pg_insert(behaviour_months)
            .values(
                member_id=member_id,
                month=month,
                awarded=points,
            )
            .on_conflict_do_update(
                index_elements=["member_id", "month"], set_={"awarded": behaviour_months.c.awarded + points}
            )
        )

    async def add_lots(self, *, member_id: str, entry_id: str, created: Sequence[domain.Lot]) -> None:
        for lot in created:
            self.uow.insert_later(
                lots,
                {
                    "lot_id": lot.lot_id,
                    "member_id": member_id,
                    "points": lot.points,
                    "remaining": lot.remaining,
                    "earned_at": lot.earned_at,
                    "available_at": lot.available_at,
                    "expires_on": lot.expires_on,
                    "qualifying": lot.qualifying,
                    "purchase_id": lot.purchase_id,
                    "entry_id": entry_id,
                },
            )

    async def update_lots(self, *, changed: Sequence[domain.Lot]) -> None:
        for lot in changed:
            self.uow.update_later(lots, {"lot_id": lot.lot_id}, {"remaining": lot.remaining})

    async def add_entry(self, *, entry: Entry) -> None:
        self.uow.insert_later(
            entries,
            {
                "entry_id": entry.entry_id,
                "member_id": entry.member_id,
                "chain_id": entry.chain_id,
                "delta": entry.delta,
                "balance": entry.balance,
                "entry_type": entry.entry_type,
                "reason": entry.reason,
                "source_event_id": entry.source_event_id,
                "occurred_at": entry.occurred_at,
                "qualifying": entry.qualifying,
                "capped": entry.capped,
                "created_at": entry.created_at,
            },
        )

    async def set_balance(self, *, member_id: str, balance: int, at: datetime) -> None:
        self.uow.update_later(members, {"member_id": member_id}, {"balance": balance, "updated_at": at})

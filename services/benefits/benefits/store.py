"""The tables benefits' event handlers read and write, behind one interface.

:class:`BenefitsStore` says what the handlers need in the domain's words; :class:`SqlStore` is
the real one, over the unit of work's transaction. A fast test gives the handlers an in-memory
store instead (``uow.provide(BenefitsStore, InMemoryStore(...))``); the SQL here is tested on the
real PostgreSQL by the integration tests.

The store loads and saves; the rules (which tier a purchase is judged by, which purchases a tier
change judges again, what a tier grants) are the domain's, in :mod:`benefits.domain`.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Any, TypeVar

from sqlalchemy import Row, and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import UnitOfWork
from shared.events import BenefitGranted, BenefitRedeemed, BenefitRevoked
from shared.platform import chain_timezone
from shared.policy import Policy

from . import domain
from .tables import entitlements, large_purchases, members, policies, tier_changes

#: the events that carry a benefit as it is after the change they announce
B = TypeVar("B", BenefitGranted, BenefitRedeemed, BenefitRevoked)


@dataclass(frozen=True)
class Held:
    """A stored entitlement and whose it is: what an event about it needs."""

    member_id: str
    chain_id: str
    entitlement: domain.Entitlement


# ---- rows <-> domain ----------------------------------------------------------------------------


def entitlement_of(row: Row[Any]) -> domain.Entitlement:
    return domain.Entitlement(
        benefit_id=row.benefit_id,
        code=row.code,
        kind=row.kind,
        tier=row.tier,
        status=row.status,
        valid_from=row.valid_from,
        valid_until=row.valid_until,
        remaining_uses=row.remaining_uses,
        value_fen=row.value_fen,
        percent=row.percent,
        period=row.period,
    )


def held_of(row: Row[Any]) -> Held:
    return Held(member_id=row.member_id, chain_id=row.chain_id, entitlement=entitlement_of(row))


def benefit_event(kind: type[B], e: domain.Entitlement, **extra: Any) -> B:
    """The event ``kind`` about ``e`` as it is now."""
    return kind(
        benefit_id=e.benefit_id,
        code=e.code,
        valid_from=e.valid_from,
        valid_until=e.valid_until,
        remaining_uses=e.remaining_uses,
        value_fen=e.value_fen,
        **extra,
    )


# ---- the interface ------------------------------------------------------------------------------


class BenefitsStore(abc.ABC):
    """What benefits' event handlers read and write."""

    @abc.abstractmethod
    async def policy(self, *, chain_id: str) -> Policy:
        """The chain's current programme."""

    @abc.abstractmethod
    async def timezone(self, *, chain_id: str) -> tzinfo:
        """The chain's time zone: tier-years begin on its local dates."""

    @abc.abstractmethod
    async def enrol(self, *, member_id: str, chain_id: str, tier: str, since: datetime, birthday: date) -> str | None:
        """Know a new member as holding ``tier`` since ``since``; a member an earlier TierChanged made
        known keeps its tier and gains the birthday. Returns the tier the member holds; None, changing
        nothing, when the member is known in another chain than ``chain_id``."""

    @abc.abstractmethod
    async def move_to_tier(self, *, member_id: str, chain_id: str, tier: str, since: datetime) -> bool:
        """The member holds ``tier`` since ``since``, unless the tier held is of a later time (a replay)
        or the member is known in another chain than ``chain_id``: then nothing changes and the answer
        is False."""

    @abc.abstractmethod
    async def chains_of(self, *, member_ids: Sequence[str]) -> dict[str, str]:
        """The chain of each of ``member_ids`` this service knows (enrolled, or moved to a tier)."""

    @abc.abstractmethod
    async def forget_birthday(self, *, member_id: str) -> None:
        """The member was erased: their birthday goes (no birthday voucher any more); entitlements and
        redemptions stay under the pseudonymous member_id."""

    @abc.abstractmethod
    async def record_tier_change(self, *, member_id: str, change: domain.TierChange) -> None:
        """Keep a tier change (once per member and effective time)."""

    @abc.abstractmethod
    async def tier_changes(self, *, member_id: str) -> list[domain.TierChange]:
        """Every tier change of the member kept so far."""

    @abc.abstractmethod
    async def record_large_purchase(self, *, member_id: str, purchase: domain.LargePurchase) -> None:
        """Keep a large purchase (once per purchase)."""

    @abc.abstractmethod
    async def large_purchases(self, *, member_id: str) -> list[domain.LargePurchase]:
        """Every large purchase of the member kept so far."""

    @abc.abstractmethod
    async def entitlements(self, *, member_id: str) -> list[domain.Entitlement]:
        """The member's entitlements, oldest first."""

    @abc.abstractmethod
    async def end(
        self, *, targets: Sequence[domain.Entitlement], status: domain.Status, ends_at: datetime | None = None
    ) -> list[Held]:
        """Move those of ``targets`` still active to ``status`` (ending their validity at ``ends_at`` when
        given and earlier than their own end); returns them as they are now."""

    @abc.abstractmethod
    async def grant(self, *, chain_id: str, source_id: str, grants: Sequence[tuple[str, domain.Grant]]) -> list[Held]:
        """Store the (member, grant) pairs that are not already there and return those stored.

        A duplicate is skipped, not an error: (member, code, source) is unique, so is (member, code,
        period) when there is a period, and so is an active tier-bound code without a period per member.
        """


def store_key() -> type[BenefitsStore]:
    """:class:`BenefitsStore`, the key of the transaction's store in ``uow.state``/``uow.provide``. (mypy
    refuses an abstract class written where ``type[T]`` is expected, python/mypy#4717; returned as
    ``type[BenefitsStore]``, it is the same class, type-checked.)"""
    return BenefitsStore


# ---- the real one -------------------------------------------------------------------------------


class SqlStore(BenefitsStore):
    """The store over the benefits schema, in the unit of work's transaction."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def policy(self, *, chain_id: str) -> Policy:
        return await policies.current(self.uow.session, chain_id)

    async def timezone(self, *, chain_id: str) -> tzinfo:
        return await chain_timezone(self.uow.session, chain_id)

    async def enrol(self, *, member_id: str, chain_id: str, tier: str, since: datetime, birthday: date) -> str | None:
        stmt = pg_insert(members).values(
            member_id=member_id,
            chain_id=chain_id,
            tier=tier,
            tier_since=since,
            birthday=birthday,
            updated_at=self.uow.now(),
        )
        # a row made by an earlier TierChanged keeps its tier and gains the birthday; another chain's
        # member is neither changed nor returned
        held: str | None = await self.uow.session.scalar(
            stmt.on_conflict_do_update(
                index_elements=[members.c.member_id],
                set_={"birthday": stmt.excluded.birthday},
                where=members.c.chain_id == stmt.excluded.chain_id,
            ).returning(members.c.tier)
        )
        return held

    async def move_to_tier(self, *, member_id: str, chain_id: str, tier: str, since: datetime) -> bool:
        stmt = pg_insert(members).values(
            member_id=member_id, chain_id=chain_id, tier=tier, tier_since=since, updated_at=self.uow.now()
        )
        # tiering's events of one member arrive in order; an older effective time is a replay and changes nothing
        applied = await self.uow.session.scalar(
            stmt.on_conflict_do_update(
                index_elements=[members.c.member_id],
                set_={
                    "tier": stmt.excluded.tier,
                    "tier_since": stmt.excluded.tier_since,
                    "updated_at": stmt.excluded.updated_at,
                },
                where=and_(
                    members.c.tier_since <= stmt.excluded.tier_since, members.c.chain_id == stmt.excluded.chain_id
                ),
            ).returning(members.c.tier)
        )
        return applied is not None

    async def chains_of(self, *, member_ids: Sequence[str]) -> dict[str, str]:
        rows = await self.uow.execute(
            select(members.c.member_id, members.c.chain_id).where(members.c.member_id.in_(list(member_ids)))
        )
        return {r.member_id: r.chain_id for r in rows}

    async def forget_birthday(self, *, member_id: str) -> None:
        await self.uow.execute(update(members).where(members.c.member_id == member_id).values(birthday=None))

    async def record_tier_change(self, *, member_id: str, change: domain.TierChange) -> None:
        await self.uow.execute(
            pg_insert(tier_changes)
            .values(member_id=member_id, effective_at=change.effective_at, to_tier=change.to_tier)
            .on_conflict_do_nothing()
        )

    async def tier_changes(self, *, member_id: str) -> list[domain.TierChange]:
        rows = (
            await self.uow.execute(
                select(tier_changes.c.effective_at, tier_changes.c.to_tier)
                .where(tier_changes.c.member_id == member_id)
                .order_by(tier_changes.c.effective_at)
            )
        ).all()
        return [domain.TierChange(effective_at=r.effective_at, to_tier=r.to_tier) for r in rows]

    async def record_large_purchase(self, *, member_id: str, purchase: domain.LargePurchase) -> None:
        await self.uow.execute(
            pg_insert(large_purchases)
            .values(
                purchase_id=purchase.purchase_id,
                member_id=member_id,
                amount_fen=purchase.amount_fen,
                occurred_at=purchase.occurred_at,
            )
            .on_conflict_do_nothing()
        )

    async def large_purchases(self, *, member_id: str) -> list[domain.LargePurchase]:
        rows = (
            await self.uow.execute(
                select(large_purchases)
                .where(large_purchases.c.member_id == member_id)
                .order_by(large_purchases.c.occurred_at, large_purchases.c.purchase_id)
            )
        ).all()
        return [
            domain.LargePurchase(purchase_id=r.purchase_id, amount_fen=r.amount_fen, occurred_at=r.occurred_at)
            for r in rows
        ]

    async def entitlements(self, *, member_id: str) -> list[domain.Entitlement]:
        rows = (
            await self.uow.execute(
                select(entitlements)
                .where(entitlements.c.member_id == member_id)
                .order_by(entitlements.c.created_at, entitlements.c.code)
            )
        ).all()
        return [entitlement_of(r) for r in rows]

    async def entitlements_of(self, *, member_ids: Sequence[str]) -> dict[str, list[domain.Entitlement]]:
        """:meth:`entitlements` of many members in one query (a rebuild's page), each member's oldest first."""
        held: dict[str, list[domain.Entitlement]] = {m: [] for m in member_ids}
        if held:
            for r in await self.uow.execute(
                select(entitlements)
                .where(entitlements.c.member_id.in_(list(held)))
                .order_by(entitlements.c.member_id, entitlements.c.created_at, entitlements.c.code)
            ):
                held[r.member_id].append(entitlement_of(r))
        return held

    async def end(
        self, *, targets: Sequence[domain.Entitlement], status: domain.Status, ends_at: datetime | None = None
    ) -> list[Held]:
        if not targets:
            return []
        values: dict[str, Any] = {"status": status, "updated_at": self.uow.now()}
        if ends_at is not None:
            values["valid_until"] = func.least(entitlements.c.valid_until, ends_at)  # LEAST skips NULL
        rows = (
            await self.uow.execute(
                update(entitlements)
                .where(
                    entitlements.c.benefit_id.in_([e.benefit_id for e in targets]), entitlements.c.status == "active"
                )
                .values(**values)
                .returning(*entitlements.c)
            )
        ).all()
        return [held_of(r) for r in rows]

    async def grant(self, *, chain_id: str, source_id: str, grants: Sequence[tuple[str, domain.Grant]]) -> list[Held]:
        """Insert the grants in one statement.

        ON CONFLICT DO NOTHING makes a duplicate impossible, not an error: (member, code, event) is
        unique, so is (member, code, period), and so is an active tier-bound code per member
        (a partial unique index). ``source_id`` tells apart several grants of one code that one
        event causes (care packs for several purchases).
        """
        if not grants:
            return []
        rows = [
            dict(
                benefit_id=str(uuid.uuid4()),
                member_id=member_id,
                chain_id=chain_id,
                code=g.code,
                kind=g.kind,
                tier=g.tier,
                value_fen=g.value_fen,
                percent=g.percent,
                valid_from=g.valid_from,
                valid_until=g.valid_until,
                remaining_uses=g.remaining_uses,
                status="active",
                source_event_id=source_id,
                period=g.period,
            )
            for member_id, g in grants
        ]
        inserted = (
            await self.uow.execute(
                pg_insert(entitlements).values(rows).on_conflict_do_nothing().returning(*entitlements.c)
            )
        ).all()
        return [held_of(r) for r in inserted]

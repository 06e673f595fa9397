"""The table access of tiering's event handlers, behind one interface.

:class:`TieringStore` says what qualification needs, in the domain's words: the chain's policy
and time zone, the members' tier records (locked), the qualifying facts and their trailing-window
totals, and recording an upgrade. :class:`SqlStore` is it over the real tables, in the unit of
work's transaction; the fast handler tests give an in-memory one (``uow.provide``).

:func:`trailing_totals` is also what reviews, recalculations and the API read the windows with.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import Unit, UnitOfWork
from shared.platform import chain_timezone
from shared.policy import Policy

from . import domain
from .policies import POLICIES
from .tables import members, qualifying_facts, tier_history

#: (spend_fen, qualifying points) of a member over a trailing window
Totals = tuple[int, int]


@dataclass(frozen=True)
class Member:
    """A member's tier record (a row of ``members``)."""

    member_id: str
    chain_id: str
    tier: str
    since: datetime
    review_at: datetime | None
    policy_version: int
    enrolled_at: datetime | None
    updated_at: datetime
    override_tier: str | None = None
    override_reason: str | None = None
    override_until: datetime | None = None

    @classmethod
    def of(cls, row: Any) -> Member:
        return cls(**row._mapping)


@dataclass(frozen=True)
class Fact:
    """What one consumed event adds to a member's qualification, at the time it happened
    (a row of ``qualifying_facts``, unique by ``source_event_id``)."""

    source_event_id: str
    member_id: str
    occurred_at: datetime
    spend_fen: int = 0
    points: int = 0


class TieringStore(abc.ABC):
    """What tiering's event handlers read and write."""

    @abc.abstractmethod
    async def policy(self, *, chain_id: str) -> Policy:
        """The chain's current policy."""

    @abc.abstractmethod
    async def timezone(self, *, chain_id: str) -> ZoneInfo:
        """The chain's time zone (review dates are counted in local months)."""

    @abc.abstractmethod
    async def lock_members(self, *, member_ids: Sequence[str]) -> list[Member]:
        """The tier records of those of ``member_ids`` known, locked until the transaction ends."""

    @abc.abstractmethod
    async def lock_or_create_member(
        self, *, member_id: str, chain_id: str, policy: Policy, now: datetime, enrolled_at: datetime | None = None
    ) -> Member | None:
        """The member's record, locked; created at the policy's lowest tier if unseen. An enrolment
        (``enrolled_at``) completes a record a fact created first, as long as its tier is unchanged.
        None, changing nothing, when the member is known in another chain than ``chain_id``."""

    @abc.abstractmethod
    async def stored_facts(self, *, event_ids: Sequence[str]) -> set[str]:
        """Those of ``event_ids`` whose fact is stored."""

    @abc.abstractmethod
    async def add_new_fact(self, *, fact: Fact) -> None:
        """Store a fact known not to be stored yet (written with the batch's others at the end)."""

    @abc.abstractmethod
    async def add_fact_once(self, *, fact: Fact) -> bool:
        """Store the fact unless its source event's is stored already; False then."""

    @abc.abstractmethod
    async def trailing_totals(
        self, *, member_ids: Sequence[str], window_days: int, as_of: datetime
    ) -> dict[str, Totals]:
        """(spend_fen, points) of the members over the window ending at ``as_of`` (see
        :data:`domain.MAX_CLOCK_SKEW`), neither below zero; members without facts are absent."""

    @abc.abstractmethod
    async def upgrade(
        self, *, member: Member, to_tier: str, policy_version: int, effective_at: datetime, review_at: datetime
    ) -> Member:
        """Move the member up to ``to_tier`` (reason "qualified") with a history row; the record after it."""

    @abc.abstractmethod
    async def forget_notes(self, *, member_id: str) -> None:
        """The member was erased: the operators' free-text notes about them (override reasons, history
        notes) may name them, so they become ``(erased)``; tiers and their history stay (pseudonymous)."""


ERASED_NOTE = "(erased)"


def store_key() -> type[TieringStore]:
    """:class:`TieringStore`, the key of the transaction's store in ``uow.state``/``uow.provide``. (mypy
    refuses an abstract class written where ``type[T]`` is expected, python/mypy#4717, though ``state``
    never instantiates it when given ``make``; returned as ``type[TieringStore]`` it is accepted.)"""
    return TieringStore


def store_of(uow: Unit) -> TieringStore:
    """The transaction's store: the SQL one, unless a test provided another."""
    return uow.state(store_key(), SqlStore)


async def trailing_totals(
    uow: UnitOfWork,
    *,
    member_ids: Sequence[str],
    window_days: int,
    as_of: datetime,
    skew: timedelta = domain.MAX_CLOCK_SKEW,
) -> dict[str, Totals]:
    """(spend_fen, qualifying points) of many members over the window ending at ``as_of``: one
    aggregate query for a whole batch (reviews, recalculation), never one per member. Members
    without facts are absent (they have 0, 0).

    A range scan of the (member_id, occurred_at) index, so a late event with an old occurred_at
    lands in (or out of) the window exactly where it belongs. Spend never shows below zero: a
    refund of a purchase that already left the window takes nothing more away."""
    if not member_ids:
        return {}
    rows = await uow.execute(
        select(
            qualifying_facts.c.member_id,
            func.sum(qualifying_facts.c.spend_fen).label("spend_fen"),
            func.sum(qualifying_facts.c.points).label("points"),
        )
        .where(
            qualifying_facts.c.member_id.in_(member_ids),
            qualifying_facts.c.occurred_at > as_of - timedelta(days=window_days),
            qualifying_facts.c.occurred_at <= as_of + skew,
        )
        .group_by(qualifying_facts.c.member_id)
    )
    return {r.member_id: (max(0, int(r.spend_fen)), max(0, int(r.points))) for r in rows}


class SqlStore(TieringStore):
    """The store over tiering's tables, in the unit of work's transaction."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def policy(self, *, chain_id: str) -> Policy:
        return await POLICIES.get(self.uow, chain_id)

    async def timezone(self, *, chain_id: str) -> ZoneInfo:
        return await chain_timezone(self.uow.session, chain_id)

    async def lock_members(self, *, member_ids: Sequence[str]) -> list[Member]:
        # one query for a whole batch's members, locked in member order
        rows = await self.uow.execute(
            select(members).where(members.c.member_id.in_(member_ids)).order_by(members.c.member_id).with_for_update()
        )
        return [Member.of(r) for r in rows]

    async def lock_or_create_member(
        self, *, member_id: str, chain_id: str, policy: Policy, now: datetime, enrolled_at: datetime | None = None
    ) -> Member | None:
        """PointsChanged comes from another topic than MemberEnrolled, so a fact may arrive first:
        the row it creates is completed (enrolled_at, since) when the enrolment arrives, as long
        as the member has not moved tier meanwhile. ON CONFLICT DO UPDATE locks the row, which
        serialises this member's tier changes with any other writer."""
        lowest = domain.lowest_tier(policy).code
        insert = pg_insert(members).values(
            member_id=member_id,
            chain_id=chain_id,
            tier=lowest,
            since=enrolled_at or now,
            review_at=None,
            policy_version=policy.version,
            enrolled_at=enrolled_at,
            updated_at=now,
        )
        set_: dict[str, Any] = {"updated_at": insert.excluded.updated_at}
        if enrolled_at is not None:
            set_["enrolled_at"] = insert.excluded.enrolled_at
            set_["since"] = case(
                (and_(members.c.tier == lowest, members.c.enrolled_at.is_(None)), insert.excluded.since),
                else_=members.c.since,
            )
        # a member of another chain is neither changed nor returned (the conflict's WHERE fails)
        upsert = insert.on_conflict_do_update(
            index_elements=["member_id"], set_=set_, where=members.c.chain_id == insert.excluded.chain_id
        ).returning(*members.c)
        row = (await self.uow.execute(upsert)).first()
        return Member.of(row) if row is not None else None

    async def stored_facts(self, *, event_ids: Sequence[str]) -> set[str]:
        rows = await self.uow.execute(
            select(qualifying_facts.c.source_event_id).where(qualifying_facts.c.source_event_id.in_(event_ids))
        )
        return set(rows.scalars())

    async def add_new_fact(self, *, fact: Fact) -> None:
        self.uow.insert_later(qualifying_facts, asdict(fact))

    async def add_fact_once(self, *, fact: Fact) -> bool:
        inserted = (
            await self.uow.execute(
                pg_insert(qualifying_facts)
                .values(**asdict(fact))
                .on_conflict_do_nothing(index_elements=["source_event_id"])
                .returning(qualifying_facts.c.id)
            )
        ).first()
        return inserted is not None

    async def trailing_totals(
        self, *, member_ids: Sequence[str], window_days: int, as_of: datetime
    ) -> dict[str, Totals]:
        return await trailing_totals(self.uow, member_ids=member_ids, window_days=window_days, as_of=as_of)

    async def upgrade(
        self, *, member: Member, to_tier: str, policy_version: int, effective_at: datetime, review_at: datetime
    ) -> Member:
        changed = (
            await self.uow.execute(
                update(members)
                .where(members.c.member_id == member.member_id)
                .values(
                    tier=to_tier,
                    since=effective_at,
                    review_at=review_at,
                    policy_version=policy_version,
                    updated_at=effective_at,
                )
                .returning(*members.c)
            )
        ).one()
        await self.uow.execute(
            tier_history.insert().values(
                member_id=member.member_id,
                from_tier=member.tier,
                to_tier=to_tier,
                direction="up",
                reason="qualified",
                effective_at=effective_at,
                policy_version=policy_version,
                review_at=review_at,
            )
        )
        return Member.of(changed)

    async def forget_notes(self, *, member_id: str) -> None:
        await self.uow.execute(
            update(members)
            .where(members.c.member_id == member_id, members.c.override_reason.is_not(None))
            .values(override_reason=ERASED_NOTE)
        )
        await self.uow.execute(
            update(tier_history)
            .where(tier_history.c.member_id == member_id, tier_history.c.note.is_not(None))
            .values(note=ERASED_NOTE)
        )

"""The SQL that applies enrollment's rules agrees with the rules in ``enrollment.domain``: random
histories go to both, on the real PostgreSQL (each in a transaction that is rolled back).

* which purchase completes a pending referral: ``jobs.due_referrals`` vs ``domain.referral_purchase``;
* how a sequence of changes builds the status view (a rebuild's replacement of every benefit among
  them): ``store.SqlStore``'s upserts vs ``domain.apply``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from enrollment import domain
from enrollment.jobs import due_referrals
from enrollment.store import SqlStore
from enrollment.tables import purchases, referrals, shared
from shared.db import UnitOfWork
from shared.testing import FixedClock

pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment")]

T = TypeVar("T")
AS_OF = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Database:
    """One event loop and engine for the module; every example runs in a transaction rolled back."""

    def __init__(self, url: str) -> None:
        self.runner = asyncio.Runner()
        self.engine: AsyncEngine = self.runner.run(self._connect(url))

    @staticmethod
    async def _connect(url: str) -> AsyncEngine:
        return create_async_engine(url, pool_size=1)

    def rolled_back(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        async def go() -> T:
            async with AsyncSession(self.engine) as session:
                uow = UnitOfWork(FixedClock(AS_OF), session=session, tables=shared, shards=1)
                try:
                    return await work(uow)
                finally:
                    await session.rollback()

        return self.runner.run(go())

    def close(self) -> None:
        self.runner.run(self.engine.dispose())
        self.runner.close()


@pytest.fixture(scope="module")
def db(stack: Any) -> Iterator[Database]:
    database = Database(stack.postgres.url)
    yield database
    database.close()


# ---- which purchase completes a referral ---------------------------------------------------------

# few distinct times, so that purchases at the same instant are ordered by their id
history_st = st.lists(
    st.lists(
        st.tuples(
            st.integers(1, 300_000),  # amount_fen
            st.integers(0, 100),  # refunded, percent of the amount
            st.sampled_from([0, 60, 60 * 24 * 3, 60 * 24 * 7, 60 * 24 * 7 + 1, 60 * 24 * 10]),  # minutes ago
        ),
        max_size=5,
    ),
    min_size=1,
    max_size=4,
)


@FEW
@given(history_st, st.integers(0, 10), st.sampled_from([0, 1, 50_000, 100_000, 200_000]))
def test_the_referral_job_picks_the_purchase_the_domain_rule_picks(
    db: Database, history: list[list[tuple[int, int, int]]], pending_days: int, min_fen: int
) -> None:
    chain_id = f"rule-test-{uuid.uuid4().hex[:12]}"
    by_referee: dict[str, list[domain.Purchase]] = {}
    for r, referee_purchases in enumerate(history):
        referee = f"{chain_id}-referee-{r}"
        by_referee[referee] = [
            domain.Purchase(
                purchase_id=f"{chain_id}-p{r}{i:02d}",
                member_id=referee,
                amount_fen=amount,
                refunded_fen=amount * share // 100,
                occurred_at=AS_OF - timedelta(minutes=minutes_ago),
            )
            for i, (amount, share, minutes_ago) in enumerate(referee_purchases)
        ]

    async def sql(uow: UnitOfWork) -> dict[str, str]:
        for referee, bought in by_referee.items():
            await uow.execute(
                referrals.insert().values(
                    referee_id=referee, referrer_id="referrer", chain_id=chain_id, created_at=AS_OF
                )
            )
            for p in bought:
                await uow.execute(
                    purchases.insert().values(
                        purchase_id=p.purchase_id,
                        chain_id=chain_id,
                        clinic_id="c1",
                        pos_txn_id=p.purchase_id,
                        member_id=p.member_id,
                        amount_fen=p.amount_fen,
                        refunded_fen=p.refunded_fen,
                        currency="CNY",
                        occurred_at=p.occurred_at,
                        items=[],
                        request_hash="h",
                    )
                )
        due = await due_referrals(
            uow,
            chain_id=chain_id,
            window_end=domain.referral_window_end(AS_OF, pending_days),
            min_purchase_fen=min_fen,
            limit=500,
        )
        return {row.referee_id: row.purchase_id for row in due}

    expected = {
        referee: chosen
        for referee, bought in by_referee.items()
        if (
            chosen := domain.referral_purchase(bought, as_of=AS_OF, pending_days=pending_days, min_purchase_fen=min_fen)
        )
        is not None
    }
    assert db.rolled_back(sql) == expected


# ---- how changes build the status view -----------------------------------------------------------

change_st = st.tuples(
    st.integers(0, 1),  # which member
    st.one_of(
        st.builds(
            domain.SetSnapshot,
            st.sampled_from(["points", "tier", "progress"]),
            st.builds(lambda n, nested: {"n": n, "nested": nested}, st.integers(0, 5), st.lists(st.integers(0, 3))),
        ),
        st.builds(
            lambda b, uses, until: domain.KeepBenefit(
                {"benefit_id": b, "code": "care_pack", "remaining_uses": uses, "valid_until": until}
            ),
            st.sampled_from(["b1", "b2", "b3"]),
            st.none() | st.integers(0, 3),
            st.none() | st.just("2026-01-01T00:00:00+00:00"),
        ),
        st.builds(domain.DropBenefit, st.sampled_from(["b1", "b2", "b3"])),
        st.builds(  # a rebuild's BenefitsSnapshot: every entry at once
            lambda entries: domain.SetBenefits(
                {
                    b: {"benefit_id": b, "code": "skin_check", "remaining_uses": uses, "valid_until": None}
                    for b, uses in entries
                }
            ),
            st.lists(st.tuples(st.sampled_from(["b1", "b2", "b3"]), st.none() | st.integers(0, 3)), max_size=3),
        ),
    ),
)


@FEW
@given(st.lists(change_st, max_size=12), st.booleans())
def test_the_sql_store_builds_the_view_the_domain_projection_builds(
    db: Database, changes: list[tuple[int, domain.Change]], batched: bool
) -> None:
    members = [f"view-test-{uuid.uuid4().hex[:12]}-{i}" for i in range(2)]

    async def sql(uow: UnitOfWork) -> dict[str, domain.StatusDocument | None]:
        store = SqlStore(uow)
        pending: dict[str, dict[domain.SnapshotColumn, domain.Doc]] = {}
        for who, change in changes:
            member_id = members[who]
            if isinstance(change, domain.SetSnapshot):
                if batched:  # as the handlers do: the newest of each kind, written at the end
                    pending.setdefault(member_id, {})[change.column] = change.doc
                else:
                    await store.write_snapshots(snapshots={member_id: {change.column: change.doc}})
            elif isinstance(change, domain.KeepBenefit):
                await store.keep_benefit(member_id=member_id, benefit=change.benefit)
            elif isinstance(change, domain.SetBenefits):
                await store.set_benefits(member_id=member_id, benefits=change.benefits)
            else:
                await store.drop_benefit(member_id=member_id, benefit_id=change.benefit_id)
        await store.write_snapshots(snapshots=pending)
        stored = {m: await store.status_of(member_id=m) for m in members}
        return {m: s.document if s else None for m, s in stored.items()}

    expected: dict[str, domain.StatusDocument | None] = dict.fromkeys(members)
    for who, change in changes:
        expected[members[who]] = domain.apply(expected[members[who]], change)
    assert db.rolled_back(sql) == expected

"""The qualification rule exists twice: as Python over the SQL window sums (``store.trailing_totals``
then ``domain.qualified_tier``: what qualification, reviews and recalculations apply) and as one SQL
statement over a whole chain (``simulation``: the what-if of a proposed policy). Hypothesis feeds both
the same random histories and policies, on the real PostgreSQL, and asserts they agree:

* member by member (grouped as the simulation groups them): the tier each qualifies for under the
  proposal, the override floor, and the spend over both windows;
* end to end: the tiers a recalculation under the proposal actually gives the members are the
  tiers the simulation predicted;
* and the in-memory store of the fast handler tests sums the windows as the SQL does.

Each example runs in one transaction that is rolled back: nothing is left, and the services running
on the stack never see it (only the database is used; the services are those of the other tiering
modules, so the running stack is reused).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from services.tiering.tests.unit.memory_store import InMemoryStore
from shared.db import UnitOfWork
from shared.policy import Policy, TierRule
from shared.testing import FixedClock
from tiering import domain, simulation, store
from tiering.recalculation import recalculate_batch
from tiering.tables import members, policies, qualifying_facts, shared

pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "tiering")]

AS_OF = datetime(2030, 1, 15, 4, 0, tzinfo=UTC)
MICRO = timedelta(microseconds=1)


# ---- random policies and histories --------------------------------------------------------------


@st.composite
def tier_policies(draw: st.DrawFn) -> Policy:
    """A policy of 1 to 5 tiers ``t0``.. with increasing thresholds (t0's zero) and a random window."""
    n = draw(st.integers(1, 5))
    spends = sorted(draw(st.lists(st.integers(1, 40_000_000), min_size=n - 1, max_size=n - 1, unique=True)))
    points = sorted(draw(st.lists(st.integers(1, 400_000), min_size=n - 1, max_size=n - 1, unique=True)))
    return Policy(
        tiers=[
            TierRule(code=f"t{i}", name=f"T{i}", spend_fen=s, points=p)
            for i, (s, p) in enumerate(zip([0, *spends], [0, *points], strict=True))
        ],
        qualification_window_days=draw(st.sampled_from([1, 30, 90, 365, 400])),
        benefits={},
    )


@dataclass(frozen=True)
class Story:
    member_id: str
    tier: str
    override_tier: str | None
    override_until: datetime | None
    facts: list[tuple[datetime, int, int]]  # (occurred_at, spend_fen, points)


@dataclass(frozen=True)
class Example:
    current: Policy
    proposal: Policy
    stories: list[Story]


@st.composite
def examples(draw: st.DrawFn) -> Example:
    current, proposal = draw(tier_policies()), draw(tier_policies())
    # the instants where the windows begin and end, exactly and a microsecond either side, and any other
    edges = [
        AS_OF - timedelta(days=days) + d
        for days in (current.qualification_window_days, proposal.qualification_window_days)
        for d in (-MICRO, timedelta(), MICRO)
    ] + [AS_OF + domain.MAX_CLOCK_SKEW + d for d in (-MICRO, timedelta(), MICRO)]
    moments = st.one_of(
        st.sampled_from(edges),
        st.integers(-410 * 86_400, 3_600).map(lambda s: AS_OF + timedelta(seconds=s)),
    )
    # amounts exactly at a threshold (one fact in the window then reaches it exactly), or any other
    tiers = [*current.tiers, *proposal.tiers]
    fact = st.tuples(
        moments,
        st.one_of(st.just(0), st.sampled_from([t.spend_fen for t in tiers]), st.integers(-20_000_000, 50_000_000)),
        st.one_of(st.just(0), st.sampled_from([t.points for t in tiers]), st.integers(-200_000, 500_000)),
    )
    codes = sorted({t.code for t in current.tiers} | {t.code for t in proposal.tiers})
    stories = []
    for i in range(draw(st.integers(1, 4))):
        override = draw(st.one_of(st.none(), st.sampled_from(codes)))
        until = draw(
            st.one_of(st.none(), st.sampled_from([AS_OF - MICRO, AS_OF, AS_OF + MICRO, AS_OF + timedelta(days=30)]))
        )
        stories.append(
            Story(
                member_id=f"m{i}",
                tier=draw(st.sampled_from([t.code for t in current.tiers])),
                override_tier=override,
                override_until=until if override is not None else None,
                facts=draw(st.lists(fact, max_size=8)),
            )
        )
    return Example(current, proposal, stories)


# ---- the database -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(stack: Any) -> Iterator[tuple[asyncio.Runner, AsyncEngine]]:
    """One event loop and one engine for every example of the module."""
    with asyncio.Runner() as runner:
        engine = create_async_engine(stack.settings().database_url, pool_size=1)
        yield runner, engine
        runner.run(engine.dispose())


async def _seed(uow: UnitOfWork, example: Example, chain_id: str) -> None:
    await uow.execute(
        policies.insert().values(
            chain_id=chain_id,
            version=1,
            document=example.current.model_dump(mode="json"),
            created_at=AS_OF - timedelta(days=500),
        )
    )
    for s in example.stories:
        await uow.execute(
            members.insert().values(
                member_id=f"{chain_id}-{s.member_id}",
                chain_id=chain_id,
                tier=s.tier,
                since=AS_OF - timedelta(days=600),
                review_at=None,
                policy_version=1,
                enrolled_at=AS_OF - timedelta(days=600),
                updated_at=AS_OF - timedelta(days=600),
                override_tier=s.override_tier,
                override_reason="test" if s.override_tier else None,
                override_until=s.override_until,
            )
        )
        if s.facts:
            await uow.execute(
                qualifying_facts.insert(),
                [
                    {
                        "member_id": f"{chain_id}-{s.member_id}",
                        "occurred_at": at,
                        "spend_fen": spend,
                        "points": points,
                        "source_event_id": str(uuid.uuid4()),
                    }
                    for at, spend, points in s.facts
                ],
            )


async def _check(engine: AsyncEngine, example: Example) -> None:
    chain_id = f"agree-{uuid.uuid4().hex[:12]}"
    current, proposal = example.current, example.proposal
    ids = [f"{chain_id}-{s.member_id}" for s in example.stories]
    async with AsyncSession(engine) as session:
        transaction = await session.begin()
        try:
            uow = UnitOfWork(FixedClock(AS_OF), session=session, tables=shared, shards=1)
            await _seed(uow, example, chain_id)

            # the Python rule, over the SQL window sums (what qualification, reviews and recalculation do)
            proposed = await store.trailing_totals(
                uow, member_ids=ids, window_days=proposal.qualification_window_days, as_of=AS_OF
            )
            held_now = await store.trailing_totals(
                uow, member_ids=ids, window_days=current.qualification_window_days, as_of=AS_OF
            )
            expected: Counter[tuple[str, str | None, int]] = Counter()
            spends: Counter[tuple[str, str | None, int, str]] = Counter()
            recalculated: Counter[str] = Counter()
            for member_id, s in zip(ids, example.stories, strict=True):
                spend, points = proposed.get(member_id, (0, 0))
                qualified = domain.qualified_tier(proposal, spend, points)
                holds = domain.override_holds(s.override_tier, s.override_until, AS_OF)
                floor = s.override_tier if holds else None
                key = (s.tier, floor, proposal.rank(qualified))
                expected[key] += 1
                spends[(*key, "current")] += held_now.get(member_id, (0, 0))[0]
                spends[(*key, "proposed")] += spend
                recalculated[domain.recalculated_tier(proposal, qualified, floor)] += 1

            # the SQL rule: the simulation's one statement
            groups = await simulation.member_groups(
                uow, chain_id=chain_id, current=current, proposal=proposal, as_of=AS_OF
            )
            assert {(g.tier, g.floor, g.proposed_rank): int(g.members) for g in groups} == dict(expected)
            for g in groups:
                key = (g.tier, g.floor, g.proposed_rank)
                assert (int(g.spend_current), int(g.spend_proposed)) == (
                    spends[(*key, "current")],
                    spends[(*key, "proposed")],
                ), key

            # end to end: what the simulation predicts is what a recalculation under the proposal does
            predicted = await simulation.simulate(uow, chain_id=chain_id, proposal=proposal)
            assert +Counter(predicted.proposed) == recalculated
            await uow.execute(
                policies.insert().values(
                    chain_id=chain_id, version=2, document=proposal.model_dump(mode="json"), created_at=AS_OF
                )
            )
            job = SimpleNamespace(job_id="none", chain_id=chain_id, policy_version=2, cursor=None)
            await recalculate_batch(uow, job)
            tiers = (await uow.execute(select(members.c.tier).where(members.c.chain_id == chain_id))).scalars()
            assert Counter(tiers) == recalculated

            # the fast tests' in-memory store sums the windows as the SQL does
            memory = InMemoryStore(
                facts=[
                    store.Fact(str(uuid.uuid4()), member_id, at, spend, points)
                    for member_id, s in zip(ids, example.stories, strict=True)
                    for at, spend, points in s.facts
                ]
            )
            for policy, sums in ((proposal, proposed), (current, held_now)):
                window = policy.qualification_window_days
                assert await memory.trailing_totals(member_ids=ids, window_days=window, as_of=AS_OF) == sums
        finally:
            await transaction.rollback()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(example=examples())
def test_the_simulations_sql_and_the_python_rule_agree_on_every_members_qualified_tier(
    db: tuple[asyncio.Runner, AsyncEngine], example: Example
) -> None:
    runner, engine = db
    runner.run(_check(engine, example))

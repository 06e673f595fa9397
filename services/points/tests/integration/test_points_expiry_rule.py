"""The expiry rule in one place: the expiry job's SQL selects the same lots and members as the
domain's rule, on random lots, instants, notice windows and chain time zones.

The job claims candidates in SQL with the day bounds the domain computes
(``domain.first_unexpired_day``, ``domain.warning_window``); the domain says which lots have
expired (``Lot.is_expired``, ``Wallet.expire``) and which are to be announced
(``Wallet.expiring_soon``). Here the job's own statements run on the real PostgreSQL against
lots written in a transaction that is rolled back, and must agree with the domain exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack.stack import Stack
from points import domain, jobs
from points.tables import lots, members

pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "points")]

# each side of the date line and of UTC: a chain's day starts up to 14 hours before or 11 after UTC's
ZONES = ["Asia/Shanghai", "UTC", "America/Los_Angeles", "Pacific/Kiritimati", "Pacific/Pago_Pago"]


@dataclass(frozen=True)
class RandomLot:
    member: int
    expires_in_days: int  # from the chain's local today
    remaining: int
    notified: bool


@dataclass(frozen=True)
class History:
    tz: ZoneInfo
    as_of: datetime
    notice_days: int
    members: int
    lots: list[RandomLot]


@st.composite
def histories(draw: st.DrawFn) -> History:
    tz = ZoneInfo(draw(st.sampled_from(ZONES)))
    as_of = draw(
        st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2031, 12, 31), timezones=st.just(tz))
    ).astimezone(UTC)
    notice_days = draw(st.integers(0, 45))
    n_members = draw(st.integers(1, 3))
    # most expiry days near the edges (today, the end of the notice window), some anywhere
    near_edges = st.sampled_from([-2, -1, 0, 1, 2]) | st.integers(notice_days - 2, notice_days + 2)
    lot = st.builds(
        RandomLot,
        member=st.integers(0, n_members - 1),
        expires_in_days=near_edges | st.integers(-400, 400),
        remaining=st.sampled_from([0, 0, 1, 70]),
        notified=st.booleans(),
    )
    return History(tz, as_of, notice_days, n_members, draw(st.lists(lot, max_size=12)))


@pytest.fixture(scope="module")
async def engine(stack: Stack) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(stack.postgres.url)
    yield engine
    await engine.dispose()


def domain_lots(history: History, chain: str) -> dict[str, list[domain.Lot]]:
    """The random lots as the domain holds them, by member; lot ids are their positions."""
    today = history.as_of.astimezone(history.tz).date()
    held: dict[str, list[domain.Lot]] = {f"{chain}-m{i}": [] for i in range(history.members)}
    for i, r in enumerate(history.lots):
        held[f"{chain}-m{r.member}"].append(
            domain.Lot(
                lot_id=f"{chain}-l{i:02d}",
                points=max(r.remaining, 1),
                remaining=r.remaining,
                earned_at=history.as_of - timedelta(days=800),
                available_at=history.as_of - timedelta(days=793),
                expires_on=today + timedelta(days=r.expires_in_days),
                expiry_notified=r.notified,
            )
        )
    return held


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories())
async def test_the_expiry_jobs_sql_selects_exactly_what_the_domain_rule_decides(
    engine: AsyncEngine, history: History
) -> None:
    # the function-scoped fixture is the suite's process watchdog: checking once around all examples is its job
    chain = f"expiry-rule-{uuid.uuid4().hex[:10]}"
    rows = [
        {
            "lot_id": lot.lot_id,
            "member_id": m,
            "points": lot.points,
            "remaining": lot.remaining,
            "earned_at": lot.earned_at,
            "available_at": lot.available_at,
            "expires_on": lot.expires_on,
            "qualifying": False,
            "purchase_id": None,
            "entry_id": "e",
            "expiry_notified_at": history.as_of if lot.expiry_notified else None,
        }
        for m, held in domain_lots(history, chain).items()
        for lot in held
    ]
    wallets = {
        m: domain.Wallet(sum(lot.remaining for lot in held), held, history.tz)
        for m, held in domain_lots(history, chain).items()
    }
    # the domain's rule
    to_announce = {lot.lot_id for w in wallets.values() for lot in w.expiring_soon(history.as_of, history.notice_days)}
    with_lapsed = {m for m, w in wallets.items() if w.expire(history.as_of)}

    # the job's SQL, with the bounds the job computes
    first_day, last_day = domain.warning_window(history.as_of, history.tz, history.notice_days)
    cutoff = domain.first_unexpired_day(history.as_of, history.tz)
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            await conn.execute(
                insert(members),
                [{"member_id": m, "chain_id": chain, "enrolled_at": history.as_of} for m in wallets],
            )
            if rows:
                await conn.execute(insert(lots), rows)
            announced = {r.lot_id for r in await conn.execute(jobs.lots_to_announce(chain, first_day, last_day))}
            lapsed = {r.member_id for r in await conn.execute(jobs.members_with_lapsed_lots(chain, cutoff))}
        finally:
            await transaction.rollback()
    assert announced == to_announce
    assert lapsed == with_lapsed

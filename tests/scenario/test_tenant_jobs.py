"""Operations runs of jobs act on the caller's chain only, and only near the service clock's now.

A stack of its own: its workers' schedules look for due work once at start-up and then not for an
hour (``MEMBERSHIP_SCHEDULE_INTERVAL_SECONDS``), so whatever a chain has due stays due until an
operations endpoint runs the job; and its clock (``MEMBERSHIP_CLOCK_FILE``) moves two years on, so
that the victim chain's points lapse, its reviews, referrals and birthday vouchers fall due. The
``as_of`` bounds are the defaults (an hour ahead of the service clock, a week back).

For every operations job (referrals, expiry, reviews, birthday vouchers, a recalculation): chain
A's ops key runs it and chain B's member with something due is unchanged; B's own ops key asking
for an ``as_of`` beyond the bounds gets a 422 problem and nothing changes; B's run within the
bounds then does the work, which shows there was something due to protect.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devstack.processes import free_port
from devstack.stack import Stack
from shared.settings import SERVICES
from tests.backends import infrastructure
from tests.helpers import OPS, Api, eventually, is_problem, purchase_body
from tests.scenario.conftest import ControlledClock

pytestmark = pytest.mark.e2e

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: far enough for B's points to lapse (24 months), its reviews (12) and referrals (7 days) to fall due
TWO_YEARS_ON = timedelta(days=26 * 31)


@dataclass
class Chain:
    chain_id: str
    pos: str
    app: str
    ops: str


@pytest.fixture(scope="module")
def jobs_stack() -> Iterator[Stack]:
    data_dir = Path(tempfile.mkdtemp(prefix="membership-tenant-jobs-"))
    stack = Stack(
        data_dir=data_dir,
        pg_port=free_port(),
        broker_port=free_port(),
        service_ports={s: free_port() for s in SERVICES},
        pg_conf={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
        infrastructure=infrastructure(),  # embedded, or containers (tests/backends.py)
        env_overrides={
            "MEMBERSHIP_NOTIFY_SINK_DIR": str(data_dir / "sink"),
            "MEMBERSHIP_SCHEDULE_INTERVAL_SECONDS": "3600",
            "MEMBERSHIP_CONSUMER_RETRY_BACKOFF_SECONDS": "0.05",
            "MEMBERSHIP_CLOCK_FILE": str(data_dir / "clock-offset"),
            "MEMBERSHIP_API_KEY_CACHE_SECONDS": "0",
        },
    )
    try:
        stack.start_infrastructure()
        stack.start_services()
        stack.wait_ready(90)
        yield stack
    finally:
        stack.stop()
        if os.environ.get("MEMBERSHIP_KEEP_TEST_DATA") != "1":
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api(jobs_stack: Stack) -> Api:
    return Api({s: jobs_stack.url(s) for s in SERVICES})


@pytest.fixture(scope="module")
def clock(jobs_stack: Stack) -> ControlledClock:
    return ControlledClock(jobs_stack.data_dir / "clock-offset")


@pytest.fixture(scope="module")
def victim(jobs_stack: Stack) -> Chain:
    """Chain B, whose members have work due; the demo chain (its ops key ``OPS``) is chain A."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.platform import add_api_key, upsert_chain

    async def go() -> Chain:
        assert jobs_stack.postgres is not None
        engine = create_async_engine(jobs_stack.postgres.url)
        try:
            await upsert_chain(engine, "victim-chain", "Victim Clinics")
            keys = [await add_api_key(engine, "victim-chain", [s], name=f"victim-{s}") for s in ("pos", "app", "ops")]
            return Chain("victim-chain", *keys)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _enrol(api: Api, chain: Chain, **overrides: Any) -> str:
    body = {
        "phone": "137" + str(uuid.uuid4().int)[:8],
        "name": "受害会员",
        "birthday": "1990-06-15",
        "home_clinic_id": "clinic-1",
        "source": "walk_in",
        "consents": {"marketing": True, "sms": True, "email": False},
        **overrides,
    }
    r = api.post("enrollment", "/v1/members", body, key=chain.app)
    assert r.status_code == 201, r.text
    return str(r.json()["member_id"])


def _buy(api: Api, chain: Chain, member_id: str, amount_fen: int) -> None:
    r = api.post("enrollment", "/v1/purchases", purchase_body(member_id, amount_fen), key=chain.pos)
    assert r.status_code == 202, r.text


@dataclass
class Due:
    """B's members, each with one job's work due once the clock has moved on."""

    referee: str
    referrer: str
    points: str
    reviewed: str
    birthday: str
    recalculated: str


@pytest.fixture(scope="module")
def due(api: Api, victim: Chain, clock: ControlledClock) -> Due:
    later = (clock.now() + TWO_YEARS_ON).astimezone(SHANGHAI)
    referrer = _enrol(api, victim)
    code = api.get("enrollment", f"/v1/members/{referrer}", key=victim.app).json()["referral_code"]
    referee = _enrol(api, victim, referral_code=code, source="referral")
    points, reviewed = _enrol(api, victim), _enrol(api, victim)
    birthday = _enrol(api, victim, birthday=f"1991-{later.month:02d}-{min(later.day, 28):02d}")
    recalculated = _enrol(api, victim)
    _buy(api, victim, referee, 200_000)  # above the referral's minimum
    _buy(api, victim, points, 600_000)
    _buy(api, victim, reviewed, 5_000_000)  # silver at once; nothing more: a review demotes
    _buy(api, victim, recalculated, 1_000_000)  # silver under B's lower thresholds, once recalculated
    d = Due(referee, referrer, points, reviewed, birthday, recalculated)
    eventually(lambda: _balance(api, victim, d.points) > 0)
    eventually(lambda: _tier(api, victim, d.reviewed) == "silver")
    # both facts of the purchase counted (its spend, and the points it earned): none arrives after B's
    # policy changes below, which would upgrade the member at once
    eventually(lambda: _tier_of(api, victim, d.recalculated)["progress"]["spend_fen"] == 1_000_000)
    eventually(lambda: _tier_of(api, victim, d.recalculated)["progress"]["points"] > 0)
    eventually(lambda: _benefit_codes(api, victim, d.birthday) != set())
    eventually(lambda: _referral_status(api, victim, d.referee) == "pending")
    return d


def _balance(api: Api, chain: Chain, member_id: str) -> int:
    r = api.get("points", f"/v1/members/{member_id}/points", key=chain.app)
    assert r.status_code == 200, r.text
    return int(r.json()["balance"])


def _tier_of(api: Api, chain: Chain, member_id: str) -> dict[str, Any]:
    r = api.get("tiering", f"/v1/members/{member_id}/tier", key=chain.app)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _tier(api: Api, chain: Chain, member_id: str) -> str:
    return str(_tier_of(api, chain, member_id)["code"])


def _benefit_codes(api: Api, chain: Chain, member_id: str) -> set[str]:
    r = api.get("benefits", f"/v1/members/{member_id}/benefits", key=chain.app)
    assert r.status_code == 200, r.text
    return {b["code"] for b in r.json()["items"]}


def _referral_status(api: Api, chain: Chain, member_id: str) -> str | None:
    r = api.get("enrollment", f"/v1/members/{member_id}", key=chain.app)
    assert r.status_code == 200, r.text
    status: str | None = r.json()["referral_status"]
    return status


def _attack_as_of(api: Api, chain: Chain, service: str, path: str, clock: ControlledClock) -> None:
    """B's own ops key asks for instants beyond the bounds: 422 problems naming ``as_of``."""
    now = clock.now()
    for as_of in (now + timedelta(hours=2), datetime(2099, 1, 1, tzinfo=SHANGHAI), now - timedelta(days=8)):
        doc = is_problem(api.post(service, path, {"as_of": as_of.isoformat()}, key=chain.ops), 422)
        assert doc["errors"][0]["location"] == ["body", "as_of"], doc


def _run(api: Api, service: str, path: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = api.post(service, path, body or {}, key=key)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _unchanged(check: Callable[[], Any], expected: Any) -> None:
    assert check() == expected


def test_a_recalculation_started_by_another_chain_moves_none_of_this_chains_members(
    api: Api, victim: Chain, due: Due
) -> None:
    # B lowers silver below what its member spent; nobody moves until a recalculation
    policy = api.get("tiering", "/v1/policy", key=victim.ops).json()
    assert _tier(api, victim, due.recalculated) == "member"
    policy["tiers"][1].update(spend_fen=800_000, points=15_000)
    put = api.put("tiering", "/v1/policy", policy, key=victim.ops)
    assert put.status_code == 200, put.text
    assert _tier(api, victim, due.recalculated) == "member"

    # A's ops key starts a recalculation: its own chain's, which B's member is not part of
    started = api.post("tiering", "/v1/policy/recalculate", {}, key=OPS)
    assert started.status_code == 202, started.text
    job = started.json()["job_id"]
    eventually(lambda: api.get("tiering", f"/v1/policy/recalculations/{job}", key=OPS).json()["status"] == "done")
    assert api.get("tiering", f"/v1/policy/recalculations/{job}", key=OPS).json()["processed"] == 0
    # B cannot read A's job, nor A B's
    is_problem(api.get("tiering", f"/v1/policy/recalculations/{job}", key=victim.ops), 404)
    assert _tier(api, victim, due.recalculated) == "member"

    # B's own recalculation moves its member
    mine = api.post("tiering", "/v1/policy/recalculate", {}, key=victim.ops).json()["job_id"]
    eventually(
        lambda: api.get("tiering", f"/v1/policy/recalculations/{mine}", key=victim.ops).json()["status"] == "done"
    )
    assert _tier(api, victim, due.recalculated) == "silver"


def test_two_years_on_each_job_run_by_another_chain_or_out_of_bounds_leaves_this_chains_members_alone(
    api: Api, victim: Chain, due: Due, clock: ControlledClock
) -> None:
    clock.advance(seconds=TWO_YEARS_ON.total_seconds())
    within = (clock.now() + timedelta(minutes=30)).isoformat()

    # ---- referral completion (enrollment) ----
    _attack_as_of(api, victim, "enrollment", "/v1/referrals/run", clock)
    assert _run(api, "enrollment", "/v1/referrals/run", OPS)["completed"] == 0
    assert _referral_status(api, victim, due.referee) == "pending"
    assert api.get("enrollment", f"/v1/members/{due.referrer}", key=victim.app).json()["referrals_completed"] == 0
    assert _run(api, "enrollment", "/v1/referrals/run", victim.ops, {"as_of": within})["completed"] == 1
    assert _referral_status(api, victim, due.referee) == "completed"

    # ---- points expiry (points) ----
    balance = _balance(api, victim, due.points)
    _attack_as_of(api, victim, "points", "/v1/points/expiry/run", clock)
    assert _balance(api, victim, due.points) == balance
    run = _run(api, "points", "/v1/points/expiry/run", OPS)
    assert (run["warned"], run["expired"], run["expired_points"]) == (0, 0, 0)
    assert _balance(api, victim, due.points) == balance
    assert _run(api, "points", "/v1/points/expiry/run", victim.ops, {"as_of": within})["expired_points"] >= balance
    assert _balance(api, victim, due.points) == 0

    # ---- tier reviews (tiering) ----
    before = _tier_of(api, victim, due.reviewed)
    _attack_as_of(api, victim, "tiering", "/v1/reviews/run", clock)
    assert _run(api, "tiering", "/v1/reviews/run", OPS)["reviewed"] == 0
    assert _tier_of(api, victim, due.reviewed) == before
    assert _run(api, "tiering", "/v1/reviews/run", victim.ops, {"as_of": within})["moved_down"] >= 1
    assert _tier(api, victim, due.reviewed) == "member"

    # ---- birthday vouchers (benefits) ----
    codes = _benefit_codes(api, victim, due.birthday)
    assert "birthday_voucher" not in codes
    _attack_as_of(api, victim, "benefits", "/v1/benefits/schedules/run", clock)
    assert _run(api, "benefits", "/v1/benefits/schedules/run", OPS)["granted"] == 0
    assert _benefit_codes(api, victim, due.birthday) == codes
    assert _run(api, "benefits", "/v1/benefits/schedules/run", victim.ops, {"as_of": within})["granted"] >= 1
    assert "birthday_voucher" in _benefit_codes(api, victim, due.birthday)


def test_runs_without_as_of_are_as_of_the_service_clock(api: Api, victim: Chain, clock: ControlledClock) -> None:
    now = clock.now()
    for service, path in (
        ("enrollment", "/v1/referrals/run"),
        ("points", "/v1/points/expiry/run"),
        ("tiering", "/v1/reviews/run"),
        ("benefits", "/v1/benefits/schedules/run"),
    ):
        as_of = datetime.fromisoformat(_run(api, service, path, victim.ops)["as_of"])
        assert abs((as_of - now).total_seconds()) < 120, (service, as_of, now)
        # an as_of without a zone is refused as before, and so is a bad body
        is_problem(api.post(service, path, {"as_of": "2030-01-01T00:00:00"}, key=victim.ops), 422)

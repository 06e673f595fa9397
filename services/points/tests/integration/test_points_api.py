"""Points through its HTTP API and the real broker: events in (from enrollment or straight on the
broker), points, lots and ledger out."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import create_async_engine

from points.domain import add_months
from shared.events import (
    ActivityRecorded,
    CloudEvent,
    MemberEnrolled,
    PolicyChanged,
    PurchaseItem,
    PurchaseRecorded,
    PurchaseRefunded,
    decode,
    new_event,
)
from shared.platform import add_api_key, upsert_chain
from shared.policy import DEFAULT_POLICY
from tests.helpers import APP, OPS, POS, Api, eventually, is_problem, publish_events, purchase_body

# this service's consumers on their own (with enrollment's intake): other services' reactions to the
# same events would otherwise change what is asserted. The e2e tests run all five together.
pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "points")]

CHAIN = "demo-chain"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Chain:
    chain_id: str
    key: str  # pos, app and ops


@pytest.fixture
def chain(stack: Any) -> Chain:
    """A chain of this test's own: expiry runs far in the future and policy changes touch nobody else."""
    chain_id = f"points-test-{uuid.uuid4().hex[:10]}"

    async def go() -> str:
        engine = create_async_engine(stack.postgres.url)
        try:
            await upsert_chain(engine, chain_id, "Points Test Clinics")
            return await add_api_key(engine, chain_id, ["pos", "app", "ops"], name="points-test-all")
        finally:
            await engine.dispose()

    return Chain(chain_id, asyncio.run(go()))


def enrol_in(api: Api, chain: Chain) -> str:
    r = api.post(
        "enrollment",
        "/v1/members",
        {
            "phone": "139" + str(uuid.uuid4().int)[:8],
            "name": "测试会员",
            "birthday": "1990-06-15",
            "home_clinic_id": "clinic-1",
            "source": "walk_in",
            "consents": {"marketing": False, "sms": True},
        },
        key=chain.key,
    )
    assert r.status_code == 201, r.text
    member_id = r.json()["member_id"]
    eventually(lambda: api.get("points", f"/v1/members/{member_id}/points", key=chain.key).status_code == 200)
    return member_id


def buy(api: Api, chain: Chain, member_id: str, amount_fen: int, occurred_at: datetime | None = None) -> str:
    r = api.post(
        "enrollment", "/v1/purchases", purchase_body(member_id, amount_fen, occurred_at=occurred_at), key=chain.key
    )
    assert r.status_code == 202, r.text
    return r.json()["purchase_id"]


def noon_in_shanghai(day: date) -> datetime:
    return datetime.combine(day, time(12), SHANGHAI)


def months_ago(months: int) -> datetime:
    """Noon (Shanghai) on today's day of the month, ``months`` earlier: earned then, a lot expires at
    the end of this month when months == 24, and expired last month when months == 25."""
    return noon_in_shanghai(add_months(datetime.now(SHANGHAI).date(), -months))


def run_expiry(api: Api, chain: Chain, as_of: datetime) -> dict[str, Any]:
    r = api.post("points", "/v1/points/expiry/run", {"as_of": as_of.isoformat()}, key=chain.key)
    assert r.status_code == 200, r.text
    return r.json()


def points_of(api: Api, member_id: str, key: str = APP) -> dict[str, Any]:
    r = api.get("points", f"/v1/members/{member_id}/points", key=key)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_points(api: Api, member_id: str, balance: int, key: str = APP) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        doc = points_of(api, member_id, key)
        assert doc["balance"] == balance, doc
        return doc

    return eventually(check)


def wait_for_member(api: Api, member_id: str) -> None:
    eventually(lambda: api.get("points", f"/v1/members/{member_id}/points", key=APP).status_code == 200)


def ledger_of(api: Api, member_id: str, key: str = APP, **params: Any) -> dict[str, Any]:
    r = api.get("points", f"/v1/members/{member_id}/points/ledger", key=key, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def enrolled_event(member_id: str, enrolled_at: datetime, chain_id: str = CHAIN) -> Any:
    return new_event(
        MemberEnrolled(
            member_id=member_id,
            member_no=f"T{uuid.uuid4().hex[:8]}",
            home_clinic_id="clinic-1",
            source="walk_in",
            birthday=date(1990, 1, 1),
            enrolled_at=enrolled_at,
        ),
        member_id=member_id,
        chain_id=chain_id,
    )


def purchase_event(member_id: str, amount_fen: int, occurred_at: datetime) -> Any:
    return new_event(
        PurchaseRecorded(
            purchase_id=str(uuid.uuid4()),
            pos_txn_id=str(uuid.uuid4()),
            clinic_id="clinic-1",
            member_id=member_id,
            amount_fen=amount_fen,
            occurred_at=occurred_at,
            items=[PurchaseItem(sku="peel", category="skin_care", amount_fen=amount_fen, qty=1)],
        ),
        member_id=member_id,
        chain_id=CHAIN,
    )


def published_for(bootstrap: str, member_id: str, event_type: str = "PointsChanged") -> list[CloudEvent]:
    """The events of a type points published for a member so far (read from the start of the topic)."""

    async def read() -> list[CloudEvent]:
        consumer = AIOKafkaConsumer(
            "membership.points",
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            found: list[CloudEvent] = []
            while batch := await consumer.getmany(timeout_ms=1_000):
                events = [decode(r.value) for rs in batch.values() for r in rs]
                found += [e for e in events if e.subject == member_id and e.type == event_type]
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def funded_member(api: Api, points: int) -> str:
    """A freshly enrolled member with ``points`` available at once (an ops adjustment)."""
    member_id = api.enrol()["member_id"]
    wait_for_member(api, member_id)
    r = api.post(
        "points", f"/v1/members/{member_id}/points/adjustments", {"delta": points, "reason": "goodwill"}, key=OPS
    )
    assert r.status_code == 201, r.text
    return member_id


def test_earns_double_points_in_the_first_30_days(stack: Any, api: Api) -> None:
    member_id = api.enrol()["member_id"]
    api.purchase(member_id, 12_345)
    doc = wait_for_points(api, member_id, 246)
    assert (doc["available"], doc["pending"]) == (0, 246)  # pending until the return window passes
    [lot] = doc["lots"]
    earned = datetime.fromisoformat(lot["earned_at"])
    assert lot["remaining"] == 246
    assert datetime.fromisoformat(lot["available_at"]) == earned + timedelta(days=7)
    assert date.fromisoformat(lot["expires_on"]).day >= 28
    [entry] = ledger_of(api, member_id)["items"]
    assert (entry["entry_type"], entry["delta"], entry["balance"], entry["qualifying"]) == ("earn", 246, 246, True)
    [changed] = eventually(lambda: published_for(stack.broker.bootstrap, member_id))
    assert changed.chainid == CHAIN and changed.subject == member_id
    assert changed.data.model_dump(
        include={"entry_id", "delta", "balance", "entry_type", "qualifying", "available", "pending"}
    ) == {
        "entry_id": entry["entry_id"],
        "delta": 246,
        "balance": 246,
        "entry_type": "earn",
        "qualifying": True,
        "available": 0,
        "pending": 246,
    }


def test_earns_single_points_after_the_new_member_window(stack: Any, api: Api) -> None:
    member_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    publish_events(
        stack.broker.bootstrap,
        [
            enrolled_event(member_id, now - timedelta(days=60)),
            purchase_event(member_id, 10_099, now - timedelta(days=10)),  # past its return window
            purchase_event(member_id, 5_000, now - timedelta(hours=1)),
        ],
    )
    doc = wait_for_points(api, member_id, 150)
    assert (doc["available"], doc["pending"]) == (100, 50)
    assert [lot["remaining"] for lot in doc["lots"]] == [100, 50]  # oldest first


def test_redemption_of_more_than_the_available_points_is_a_conflict(api: Api) -> None:
    member_id = api.enrol()["member_id"]
    api.purchase(member_id, 50_000)
    wait_for_points(api, member_id, 1_000)
    short = api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 10, "reason": "gift"})
    assert is_problem(short, 409)["available"] == 0  # the purchase's points are still pending
    api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": 300, "reason": "goodwill"}, key=OPS)
    ok = api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 300, "reason": "gift"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["balance"] == 1_000
    is_problem(api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 1, "reason": "gift"}), 409)
    doc = points_of(api, member_id)
    assert (doc["balance"], doc["available"], doc["pending"]) == (1_000, 0, 1_000)


def test_the_same_idempotency_key_redeems_once(api: Api) -> None:
    member_id = funded_member(api, 500)
    path = f"/v1/members/{member_id}/points/redemptions"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.post("points", path, {"points": 200, "reason": "voucher"}, headers=key)
    again = api.post("points", path, {"points": 200, "reason": "voucher"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"entry_id": first.json()["entry_id"], "balance": 300, "value_fen": 200}
    is_problem(api.post("points", path, {"points": 100, "reason": "voucher"}, headers=key), 409)
    assert points_of(api, member_id)["balance"] == 300
    assert [e["entry_type"] for e in ledger_of(api, member_id)["items"]] == ["redeem", "adjust"]


def test_a_negative_balance_blocks_redemption(api: Api) -> None:
    member_id = funded_member(api, 100)
    r = api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": -150, "reason": "mistake"}, key=OPS)
    assert r.status_code == 201 and r.json()["balance"] == -50
    doc = points_of(api, member_id)
    assert (doc["balance"], doc["available"], doc["lots"]) == (-50, -50, [])
    is_problem(api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 1, "reason": "x"}), 409)


def test_behaviour_points_are_capped_per_calendar_month_in_shanghai(api: Api) -> None:
    # a member since 2024 (imported with that enrolment): activities before the enrolment earn nothing (0024)
    member = {
        "phone": "139" + str(uuid.uuid4().int)[:8],
        "name": "老会员",
        "birthday": "1990-06-15",
        "home_clinic_id": "clinic-1",
        "source": "walk_in",
        "enrolled_at": "2024-12-01T00:00:00+08:00",
    }
    r = api.post("enrollment", "/v1/members/batch", {"items": [member]}, key=OPS)
    assert r.status_code == 200 and r.json()["items"][0]["status"] == "created", r.text
    member_id = r.json()["items"][0]["id"]
    january = datetime(2025, 1, 15, 2, tzinfo=UTC)
    february_in_shanghai = datetime(2025, 1, 31, 16, 30, tzinfo=UTC)  # 2025-02-01 00:30 +08:00
    times = [january + timedelta(hours=i) for i in range(11)] + [february_in_shanghai]
    for i, when in enumerate(times):
        r = api.post(
            "enrollment",
            "/v1/activities",
            {
                "activity_id": f"lecture-{member_id}-{i}",
                "member_id": member_id,
                "clinic_id": "clinic-1",
                "kind": "lecture",
                "occurred_at": when.isoformat(),
            },
            key=POS,
        )
        assert r.status_code == 202, r.text
    wait_for_points(api, member_id, 2_200)
    items = eventually(lambda: (lambda page: page if len(page["items"]) == 12 else None)(ledger_of(api, member_id)))
    capped = [e for e in items["items"] if e["capped"]]
    assert [(e["delta"], e["capped"]) for e in capped] == [(0, 200)]


def test_a_refund_reverses_the_purchase_points_in_proportion(stack: Any, api: Api) -> None:
    member_id = api.enrol()["member_id"]
    purchase_id = api.purchase(member_id, 10_000)["purchase_id"]
    wait_for_points(api, member_id, 200)
    refund = new_event(
        PurchaseRefunded(
            purchase_id=purchase_id,
            refund_id="r1",
            amount_fen=2_550,
            occurred_at=datetime.now(UTC),
            member_id=member_id,
        ),
        member_id=member_id,
        chain_id=CHAIN,
    )
    publish_events(stack.broker.bootstrap, [refund, refund])  # a redelivery changes nothing
    wait_for_points(api, member_id, 149)  # floor(200 * 2550 / 10000) = 51 reversed
    stack.wait_settled()  # the repeat has been consumed too: only now does "changes nothing" mean anything
    doc = points_of(api, member_id)
    assert doc["balance"] == 149, doc
    assert doc["lots"][0]["remaining"] == 149
    reverse = ledger_of(api, member_id)["items"][0]
    assert (reverse["entry_type"], reverse["delta"], reverse["qualifying"], reverse["source_event_id"]) == (
        "reverse",
        -51,
        True,
        refund.id,
    )


def test_an_unknown_or_another_chains_member_is_not_found(stack: Any, api: Api) -> None:
    other = str(uuid.uuid4())
    publish_events(stack.broker.bootstrap, [enrolled_event(other, datetime.now(UTC), chain_id="other-chain")])
    known = funded_member(api, 10)
    assert points_of(api, known)["balance"] == 10
    # the other chain's enrolment may sit on another partition than this one's: wait until it was consumed,
    # so that a 404 below is isolation and not lag
    stack.wait_settled()
    for member_id in (str(uuid.uuid4()), other):
        is_problem(api.get("points", f"/v1/members/{member_id}/points", key=APP), 404)
        is_problem(api.get("points", f"/v1/members/{member_id}/points/ledger", key=POS), 404)
        is_problem(api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 1, "reason": "x"}), 404)
        is_problem(
            api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": 1, "reason": "x"}, key=OPS), 404
        )


def test_the_ledger_pages_newest_first_and_rejects_a_forged_cursor(api: Api) -> None:
    member_id = funded_member(api, 100)
    for delta in (1, 2, 3, 4):
        api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": delta, "reason": "x"}, key=OPS)
    first = ledger_of(api, member_id, limit=3)
    second = ledger_of(api, member_id, limit=3, cursor=first["next_cursor"])
    assert [e["delta"] for e in first["items"]] == [4, 3, 2]
    assert [e["delta"] for e in second["items"]] == [1, 100]
    assert second["next_cursor"] is None
    assert [e["balance"] for e in first["items"]] == [110, 106, 103]
    r = api.get("points", f"/v1/members/{member_id}/points/ledger", key=APP, params={"cursor": "not-a-cursor"})
    is_problem(r, 422)
    is_problem(api.get("points", f"/v1/members/{member_id}/points/ledger", key=APP, params={"limit": 201}), 422)


def test_redemption_needs_app_and_adjustment_needs_ops(api: Api) -> None:
    member_id = funded_member(api, 100)
    is_problem(
        api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 1, "reason": "x"}, key=POS), 403
    )
    is_problem(
        api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": 1, "reason": "x"}, key=APP), 403
    )
    is_problem(
        api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": 0, "reason": "x"}, key=OPS), 422
    )
    is_problem(api.get("points", f"/v1/members/{member_id}/points", key=None), 401)
    assert points_of(api, member_id, key=POS)["balance"] == 100


def test_an_activity_of_an_unknown_kind_earns_nothing(stack: Any, api: Api) -> None:
    member_id = api.enrol()["member_id"]
    wait_for_member(api, member_id)
    publish_events(
        stack.broker.bootstrap,
        [
            new_event(
                ActivityRecorded(
                    activity_id="a1", kind="karaoke", clinic_id="c", occurred_at=datetime.now(UTC), member_id=member_id
                ),
                member_id=member_id,
                chain_id=CHAIN,
            ),
            new_event(
                ActivityRecorded(
                    activity_id="a2", kind="survey", clinic_id="c", occurred_at=datetime.now(UTC), member_id=member_id
                ),
                member_id=member_id,
                chain_id=CHAIN,
            ),
        ],
    )
    wait_for_points(api, member_id, 50)
    assert [e["reason"] for e in ledger_of(api, member_id)["items"]] == ["activity:survey"]


def test_the_expiry_run_announces_a_lot_once_and_expires_it_once(stack: Any, api: Api, chain: Chain) -> None:
    member_id = enrol_in(api, chain)
    r = api.post(
        "points", f"/v1/members/{member_id}/points/adjustments", {"delta": 70, "reason": "goodwill"}, key=chain.key
    )
    assert r.status_code == 201, r.text
    [lot] = points_of(api, member_id, chain.key)["lots"]
    expires_on = date.fromisoformat(lot["expires_on"])
    ten_days_before = noon_in_shanghai(expires_on - timedelta(days=10))
    first, again = run_expiry(api, chain, ten_days_before), run_expiry(api, chain, ten_days_before)
    assert (first["warned"], first["expired"], again["warned"]) == (1, 0, 0)
    assert datetime.fromisoformat(first["as_of"]) == ten_days_before
    last_day = noon_in_shanghai(expires_on)
    assert run_expiry(api, chain, last_day)["expired"] == 0  # still usable on its last day
    day_after = noon_in_shanghai(expires_on + timedelta(days=1))
    expired, again = run_expiry(api, chain, day_after), run_expiry(api, chain, day_after)
    assert (expired["expired"], expired["expired_points"], again["expired"]) == (1, 70, 0)
    doc = points_of(api, member_id, chain.key)
    assert (doc["balance"], doc["lots"], doc["expiring"]) == (0, [], [])
    assert [(e["entry_type"], e["delta"], e["qualifying"]) for e in ledger_of(api, member_id, chain.key)["items"]] == [
        ("expire", -70, False),
        ("adjust", 70, False),
    ]
    changes = eventually(
        lambda: (lambda found: found if len(found) == 2 else None)(published_for(stack.broker.bootstrap, member_id))
    )
    assert [(c.data.entry_type, c.data.balance, c.data.model_dump(mode="json")["expiring"]) for c in changes] == [
        ("adjust", 70, [{"points": 70, "expires_on": expires_on.isoformat()}]),
        ("expire", 0, []),
    ]
    [notice] = published_for(stack.broker.bootstrap, member_id, "PointsExpiringSoon")  # published before these
    assert (notice.data.points, notice.data.expires_on, notice.data.lot_id) == (70, expires_on, lot["lot_id"])
    assert notice.chainid == chain.chain_id


def test_the_expiry_run_needs_an_ops_key(api: Api) -> None:
    is_problem(api.post("points", "/v1/points/expiry/run", {}, key=APP), 403)
    is_problem(api.post("points", "/v1/points/expiry/run", {"as_of": "2030-01-01T00:00:00"}, key=OPS), 422)


def test_a_redemption_spends_the_lot_expiring_this_month_first_and_expiry_takes_only_what_is_left(
    stack: Any, api: Api, chain: Chain
) -> None:
    member_id = enrol_in(api, chain)
    buy(api, chain, member_id, 10_000, occurred_at=months_ago(24))  # keyed in late: 100 points, available
    doc = wait_for_points(api, member_id, 100, chain.key)
    [old] = doc["lots"]
    expires_on = date.fromisoformat(old["expires_on"])
    assert expires_on.month == datetime.now(SHANGHAI).month and doc["available"] == 100
    # a lot expiring this month is always inside the 30-day notice: the worker's own schedule announces it
    [notice] = eventually(lambda: published_for(stack.broker.bootstrap, member_id, "PointsExpiringSoon") or None)
    assert (notice.data.lot_id, notice.data.expires_on, notice.data.points) == (old["lot_id"], expires_on, 100)
    api.post(
        "points", f"/v1/members/{member_id}/points/adjustments", {"delta": 50, "reason": "goodwill"}, key=chain.key
    )
    r = api.post(
        "points", f"/v1/members/{member_id}/points/redemptions", {"points": 60, "reason": "voucher"}, key=chain.key
    )
    assert r.status_code == 201, r.text
    assert r.json()["balance"] == 90 and r.json()["value_fen"] == 60
    doc = points_of(api, member_id, chain.key)
    assert next((lot["lot_id"], lot["remaining"]) for lot in doc["lots"]) == (old["lot_id"], 40)
    assert doc["expiring"][0] == {"points": 40, "expires_on": expires_on.isoformat()}
    run = run_expiry(api, chain, noon_in_shanghai(expires_on + timedelta(days=1)))
    assert (run["expired"], run["expired_points"]) == (1, 40)  # the 60 redeemed are not expired again
    doc = points_of(api, member_id, chain.key)
    assert (doc["balance"], [lot["remaining"] for lot in doc["lots"]]) == (50, [50])
    assert next((e["entry_type"], e["delta"]) for e in ledger_of(api, member_id, chain.key)["items"]) == ("expire", -40)
    stack.wait_settled()  # whatever the expiry run put in the outbox is on the topic
    assert len(published_for(stack.broker.bootstrap, member_id, "PointsExpiringSoon")) == 1  # once per lot


def test_a_fully_redeemed_lot_is_neither_announced_nor_expired(stack: Any, api: Api, chain: Chain) -> None:
    member_id = enrol_in(api, chain)
    api.post(
        "points", f"/v1/members/{member_id}/points/adjustments", {"delta": 80, "reason": "goodwill"}, key=chain.key
    )
    [lot] = points_of(api, member_id, chain.key)["lots"]
    expires_on = date.fromisoformat(lot["expires_on"])
    r = api.post(
        "points", f"/v1/members/{member_id}/points/redemptions", {"points": 80, "reason": "gift"}, key=chain.key
    )
    assert r.status_code == 201, r.text
    warn = run_expiry(api, chain, noon_in_shanghai(expires_on - timedelta(days=5)))
    lapse = run_expiry(api, chain, noon_in_shanghai(expires_on + timedelta(days=1)))
    assert (warn["warned"], lapse["expired"], lapse["expired_points"]) == (0, 0, 0)
    assert [e["entry_type"] for e in ledger_of(api, member_id, chain.key)["items"]] == ["redeem", "adjust"]
    eventually(lambda: len(published_for(stack.broker.bootstrap, member_id)) == 2)
    stack.wait_settled()  # whatever the expiry runs put in the outbox is on the topic
    assert len(published_for(stack.broker.bootstrap, member_id)) == 2
    assert published_for(stack.broker.bootstrap, member_id, "PointsExpiringSoon") == []


def test_a_purchase_arriving_after_its_points_would_have_expired_earns_no_lot(api: Api, chain: Chain) -> None:
    member_id = enrol_in(api, chain)
    buy(api, chain, member_id, 10_000, occurred_at=months_ago(25))
    [entry] = eventually(lambda: ledger_of(api, member_id, chain.key)["items"] or None)
    assert (entry["entry_type"], entry["delta"], entry["balance"]) == ("earn", 0, 0)
    assert "100 points not awarded" in entry["reason"]
    doc = points_of(api, member_id, chain.key)
    assert (doc["balance"], doc["lots"]) == (0, [])


def test_a_refund_after_redemption_leaves_a_debt_that_blocks_redemption_until_an_adjustment_repays_it(
    api: Api, chain: Chain
) -> None:
    member_id = enrol_in(api, chain)
    purchase_id = buy(api, chain, member_id, 10_000, occurred_at=datetime.now(UTC) - timedelta(days=10))
    assert wait_for_points(api, member_id, 100, chain.key)["available"] == 100  # past its return window
    redeem = f"/v1/members/{member_id}/points/redemptions"
    assert api.post("points", redeem, {"points": 100, "reason": "voucher"}, key=chain.key).status_code == 201
    r = api.post(
        "enrollment",
        f"/v1/purchases/{purchase_id}/refunds",
        {"refund_id": "r1", "amount_fen": 10_000, "occurred_at": datetime.now(UTC).isoformat()},
        key=chain.key,
    )
    assert r.status_code == 202, r.text
    doc = wait_for_points(api, member_id, -100, chain.key)
    assert (doc["available"], doc["lots"]) == (-100, [])
    assert is_problem(api.post("points", redeem, {"points": 1, "reason": "x"}, key=chain.key), 409)["balance"] == -100
    repaid = api.post(
        "points", f"/v1/members/{member_id}/points/adjustments", {"delta": 130, "reason": "repay"}, key=chain.key
    )
    assert repaid.status_code == 201 and repaid.json()["balance"] == 30
    assert [lot["remaining"] for lot in points_of(api, member_id, chain.key)["lots"]] == [30]
    ok = api.post("points", redeem, {"points": 30, "reason": "x"}, key=chain.key)
    assert ok.status_code == 201 and ok.json()["balance"] == 0


def test_a_policy_change_applies_to_the_next_purchase_and_never_rewrites_recorded_points(
    stack: Any, api: Api, chain: Chain
) -> None:
    member_id = enrol_in(api, chain)
    buy(api, chain, member_id, 10_000)
    wait_for_points(api, member_id, 200, chain.key)  # 新客 double points under the default policy
    document = DEFAULT_POLICY.model_dump(mode="json")
    document["earning"].update(points_per_yuan=3, new_member_multiplier=1)
    publish_events(
        stack.broker.bootstrap,
        [
            new_event(
                PolicyChanged(version=2, policy=document, changed_at=datetime.now(UTC)),
                member_id=f"chain:{chain.chain_id}",
                chain_id=chain.chain_id,
            )
        ],
    )

    def applied() -> bool:
        r = api.get("points", "/v1/points/policy", key=chain.key)
        assert r.status_code == 200, r.text
        return r.json()["version"] == 2 and r.json()["policy"]["earning"]["points_per_yuan"] == 3

    eventually(applied)
    assert api.get("points", "/v1/points/policy", key=OPS).json()["version"] == 1  # the demo chain is untouched
    buy(api, chain, member_id, 10_000)
    doc = wait_for_points(api, member_id, 500, chain.key)
    assert sorted(lot["remaining"] for lot in doc["lots"]) == [200, 300]
    assert [e["delta"] for e in ledger_of(api, member_id, chain.key)["items"]] == [300, 200]

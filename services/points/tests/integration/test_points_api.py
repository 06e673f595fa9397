"""Points through its HTTP API and the real broker: events in (from enrollment or straight on the
broker), points, lots and ledger out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiokafka import AIOKafkaConsumer

from shared.clock import OffsetFileClock
from shared.events import (
    ActivityRecorded, CloudEvent, MemberEnrolled, PurchaseItem, PurchaseRecorded, PurchaseRefunded, decode, new_event,
)
from tests.helpers import APP, OPS, POS, Api, eventually, is_problem, publish_events

pytestmark = pytest.mark.integration

CHAIN = "demo-chain"


def points_of(api: Api, member_id: str, key: str = APP) -> dict[str, Any]:
    r = api.get("points", f"/v1/members/{member_id}/points", key=key)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_points(api: Api, member_id: str, balance: int) -> dict[str, Any]:
    def check() -> dict[str, Any]:
        doc = points_of(api, member_id)
        assert doc["balance"] == balance, doc
        return doc

    return eventually(check)


def wait_for_member(api: Api, member_id: str) -> None:
    eventually(lambda: api.get("points", f"/v1/members/{member_id}/points", key=APP).status_code == 200)


def ledger_of(api: Api, member_id: str, **params: Any) -> dict[str, Any]:
    r = api.get("points", f"/v1/members/{member_id}/points/ledger", key=APP, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def enrolled_event(member_id: str, enrolled_at: datetime, chain_id: str = CHAIN) -> Any:
    return new_event(MemberEnrolled(member_id=member_id, member_no=f"T{uuid.uuid4().hex[:8]}",
                                    home_clinic_id="clinic-1", source="walk_in", birthday=date(1990, 1, 1),
                                    enrolled_at=enrolled_at), member_id=member_id, chain_id=chain_id)


def purchase_event(member_id: str, amount_fen: int, occurred_at: datetime) -> Any:
    return new_event(PurchaseRecorded(
        purchase_id=str(uuid.uuid4()), pos_txn_id=str(uuid.uuid4()), clinic_id="clinic-1", member_id=member_id,
        amount_fen=amount_fen, occurred_at=occurred_at,
        items=[PurchaseItem(sku="peel", category="skin_care", amount_fen=amount_fen, qty=1)],
    ), member_id=member_id, chain_id=CHAIN)


def published_for(bootstrap: str, member_id: str, event_type: str = "PointsChanged") -> list[CloudEvent]:
    """The events of a type points published for a member so far (read from the start of the topic)."""

    async def read() -> list[CloudEvent]:
        consumer = AIOKafkaConsumer("membership.points", bootstrap_servers=bootstrap, group_id=None,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
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
    r = api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": points, "reason": "goodwill"},
                 key=OPS)
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
    assert changed.data.model_dump(include={"entry_id", "delta", "balance", "entry_type", "qualifying",
                                            "available", "pending"}) == {
        "entry_id": entry["entry_id"], "delta": 246, "balance": 246, "entry_type": "earn", "qualifying": True,
        "available": 0, "pending": 246}


def test_earns_single_points_after_the_new_member_window(stack: Any, api: Api) -> None:
    member_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    publish_events(stack.broker.bootstrap, [
        enrolled_event(member_id, now - timedelta(days=60)),
        purchase_event(member_id, 10_099, now - timedelta(days=10)),  # past its return window
        purchase_event(member_id, 5_000, now - timedelta(hours=1)),
    ])
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
    is_problem(api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 1, "reason": "gift"}),
               409)
    doc = points_of(api, member_id)
    assert (doc["balance"], doc["available"], doc["pending"]) == (1_000, 0, 1_000)


def test_the_same_idempotency_key_redeems_once(api: Api) -> None:
    member_id = funded_member(api, 500)
    path = f"/v1/members/{member_id}/points/redemptions"
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.post("points", path, {"points": 200, "reason": "voucher"}, headers=key)
    again = api.post("points", path, {"points": 200, "reason": "voucher"}, headers=key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"entry_id": first.json()["entry_id"], "balance": 300}
    is_problem(api.post("points", path, {"points": 100, "reason": "voucher"}, headers=key), 409)
    assert points_of(api, member_id)["balance"] == 300
    assert [e["entry_type"] for e in ledger_of(api, member_id)["items"]] == ["redeem", "adjust"]


def test_a_negative_balance_blocks_redemption(api: Api) -> None:
    member_id = funded_member(api, 100)
    r = api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": -150, "reason": "mistake"},
                 key=OPS)
    assert r.status_code == 201 and r.json()["balance"] == -50
    doc = points_of(api, member_id)
    assert (doc["balance"], doc["available"], doc["lots"]) == (-50, -50, [])
    is_problem(api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 1, "reason": "x"}), 409)


def test_behaviour_points_are_capped_per_calendar_month_in_shanghai(api: Api) -> None:
    member_id = api.enrol()["member_id"]
    january = datetime(2025, 1, 15, 2, tzinfo=UTC)
    february_in_shanghai = datetime(2025, 1, 31, 16, 30, tzinfo=UTC)  # 2025-02-01 00:30 +08:00
    times = [january + timedelta(hours=i) for i in range(11)] + [february_in_shanghai]
    for i, when in enumerate(times):
        r = api.post("enrollment", "/v1/activities", {"activity_id": f"lecture-{member_id}-{i}",
                                                      "member_id": member_id, "clinic_id": "clinic-1",
                                                      "kind": "lecture", "occurred_at": when.isoformat()}, key=POS)
        assert r.status_code == 202, r.text
    wait_for_points(api, member_id, 2_200)
    items = eventually(lambda: (lambda page: page if len(page["items"]) == 12 else None)(ledger_of(api, member_id)))
    capped = [e for e in items["items"] if e["capped"]]
    assert [(e["delta"], e["capped"]) for e in capped] == [(0, 200)]


def test_a_refund_reverses_the_purchase_points_in_proportion(stack: Any, api: Api) -> None:
    member_id = api.enrol()["member_id"]
    purchase_id = api.purchase(member_id, 10_000)["purchase_id"]
    wait_for_points(api, member_id, 200)
    refund = new_event(PurchaseRefunded(purchase_id=purchase_id, refund_id="r1", amount_fen=2_550,
                                        occurred_at=datetime.now(UTC), member_id=member_id),
                       member_id=member_id, chain_id=CHAIN)
    publish_events(stack.broker.bootstrap, [refund, refund])  # a redelivery changes nothing
    doc = wait_for_points(api, member_id, 149)  # floor(200 * 2550 / 10000) = 51 reversed
    assert doc["lots"][0]["remaining"] == 149
    reverse = ledger_of(api, member_id)["items"][0]
    assert (reverse["entry_type"], reverse["delta"], reverse["qualifying"], reverse["source_event_id"]) == \
        ("reverse", -51, True, refund.id)


def test_an_unknown_or_another_chains_member_is_not_found(stack: Any, api: Api) -> None:
    other = str(uuid.uuid4())
    publish_events(stack.broker.bootstrap, [enrolled_event(other, datetime.now(UTC), chain_id="other-chain")])
    known = funded_member(api, 10)  # by now the other chain's enrolment was consumed too (same topic, earlier)
    assert points_of(api, known)["balance"] == 10
    for member_id in (str(uuid.uuid4()), other):
        is_problem(api.get("points", f"/v1/members/{member_id}/points", key=APP), 404)
        is_problem(api.get("points", f"/v1/members/{member_id}/points/ledger", key=POS), 404)
        is_problem(api.post("points", f"/v1/members/{member_id}/points/redemptions",
                            {"points": 1, "reason": "x"}), 404)
        is_problem(api.post("points", f"/v1/members/{member_id}/points/adjustments",
                            {"delta": 1, "reason": "x"}, key=OPS), 404)


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
    is_problem(api.post("points", f"/v1/members/{member_id}/points/redemptions", {"points": 1, "reason": "x"},
                        key=POS), 403)
    is_problem(api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": 1, "reason": "x"},
                        key=APP), 403)
    is_problem(api.post("points", f"/v1/members/{member_id}/points/adjustments", {"delta": 0, "reason": "x"},
                        key=OPS), 422)
    is_problem(api.get("points", f"/v1/members/{member_id}/points", key=None), 401)
    assert points_of(api, member_id, key=POS)["balance"] == 100


def test_an_activity_of_an_unknown_kind_earns_nothing(stack: Any, api: Api) -> None:
    member_id = api.enrol()["member_id"]
    wait_for_member(api, member_id)
    publish_events(stack.broker.bootstrap, [
        new_event(ActivityRecorded(activity_id="a1", kind="karaoke", clinic_id="c", occurred_at=datetime.now(UTC),
                                   member_id=member_id), member_id=member_id, chain_id=CHAIN),
        new_event(ActivityRecorded(activity_id="a2", kind="survey", clinic_id="c", occurred_at=datetime.now(UTC),
                                   member_id=member_id), member_id=member_id, chain_id=CHAIN),
    ])
    wait_for_points(api, member_id, 50)
    assert [e["reason"] for e in ledger_of(api, member_id)["items"]] == ["activity:survey"]


def test_points_are_announced_before_they_expire_and_then_expire(stack: Any, api: Api) -> None:
    """Last in the file: it moves every process's clock forward (and back again)."""
    member_id = funded_member(api, 70)
    [lot] = points_of(api, member_id)["lots"]
    expires_on = date.fromisoformat(lot["expires_on"])
    clock = OffsetFileClock(stack.data_dir / "clock-offset")

    def move_to(day: date) -> None:
        clock.set_offset((datetime.combine(day, time(12), ZoneInfo("Asia/Shanghai")) - datetime.now(UTC))
                         .total_seconds())

    try:
        move_to(expires_on - timedelta(days=10))
        [notice] = eventually(lambda: published_for(stack.broker.bootstrap, member_id, "PointsExpiringSoon"))
        assert (notice.data.points, notice.data.expires_on, notice.data.lot_id) == (70, expires_on, lot["lot_id"])
        move_to(expires_on + timedelta(days=1))
        doc = wait_for_points(api, member_id, 0)
        assert doc["lots"] == []
        entry = ledger_of(api, member_id)["items"][0]
        assert (entry["entry_type"], entry["delta"], entry["qualifying"]) == ("expire", -70, False)
    finally:
        clock.set_offset(0)

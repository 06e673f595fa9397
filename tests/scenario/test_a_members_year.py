"""A member's year on a controllable clock: enrolment, purchases, a referral, a birthday, an
expiry warning, a review and a downgrade, with every event and notification checked in order.

The platform's clock (every process reads MEMBERSHIP_CLOCK_FILE) only moves forward; the
scheduled work (referral completion, birthday vouchers, expiry warnings, reviews) happens
because time passes, not because the test calls operations endpoints.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import decode, topic_of
from tests.helpers import APP, OPS, Api, WebhookReceiver, eventually, purchase_body

pytestmark = pytest.mark.e2e
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _month_after(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _events_of(bootstrap: str, member_id: str) -> list:
    """Every event about ``member_id`` on every topic, in the order of their time."""

    async def go() -> list:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            topics = [topic_of(s) for s in ("enrollment", "points", "tiering", "benefits", "notify")]
            await consumer._client.force_metadata_update()
            parts = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            out = []
            for _ in range(200):
                if all([(await consumer.position(tp)) >= end[tp] for tp in parts]):
                    break
                batch = await consumer.getmany(timeout_ms=200)
                out += [decode(r.value) for rs in batch.values() for r in rs if r.key == member_id.encode()]
            return sorted(out, key=lambda e: e.time)
        finally:
            await consumer.stop()

    return asyncio.run(go())


def test_a_members_year(scenario_api: Api, scenario_stack, clock, scenario_webhook: WebhookReceiver) -> None:
    api = scenario_api
    start = clock.now()
    # a shorter expiry than the default 24 months, so the warning falls inside the year
    policy = api.get("tiering", "/v1/policy", key=OPS).json()
    policy["expiry_months"] = 6
    put = api.put("tiering", "/v1/policy", policy, key=OPS)
    assert put.status_code == 200
    # PolicyChanged reaches points on its own topic: wait until points applies it before buying
    eventually(lambda: api.get("points", "/v1/points/policy", key=OPS).json()["version"] == put.json()["version"])

    local_start = start.astimezone(SHANGHAI).date()
    birth_month = _month_after(local_start, 3)
    referrer = api.enrol(birthday=f"1985-{(birth_month.month % 12) + 1:02d}-10")
    member = api.enrol(
        birthday=f"1992-{birth_month.month:02d}-15",
        referral_code=referrer["referral_code"],
        source="referral",
        consents={"marketing": True, "sms": True, "email": False},
    )
    mid, rid = member["member_id"], referrer["member_id"]

    # day 0: 60,000 yuan, double points in the first 30 days → 120,000 points, silver at once
    r = api.post(
        "enrollment",
        "/v1/purchases",
        purchase_body(mid, 6_000_000, occurred_at=clock.now()),
        key="dev-pos-key-0000000000000000",
    )
    assert r.status_code == 202
    eventually(lambda: api.get("tiering", f"/v1/members/{mid}/tier").json()["code"] == "silver")
    tier = api.get("tiering", f"/v1/members/{mid}/tier").json()
    review_at = datetime.fromisoformat(tier["review_at"])
    assert review_at.date() in {(start + timedelta(days=d)).date() for d in (365, 366)}

    # tiering and points apply the purchase independently: wait for points' own view of it (the
    # expected balance, not just the first non-zero one)
    def points_of_the_purchase() -> dict:
        doc = api.get("points", f"/v1/members/{mid}/points").json()
        assert doc["balance"] == 120_000, doc
        return doc

    points = eventually(points_of_the_purchase)
    assert points["balance"] == 120_000 and points["pending"] == 120_000 and points["available"] == 0

    # day 8: the return window has passed: the points are available and the referral completes
    clock.advance(days=8)
    eventually(lambda: api.get("enrollment", f"/v1/members/{mid}").json()["referral_status"] == "completed")
    eventually(lambda: api.get("points", f"/v1/members/{rid}/points").json()["balance"] == 500)
    eventually(
        lambda: (
            {"referral_voucher"}
            <= {b["code"] for b in api.get("benefits", f"/v1/members/{rid}/benefits").json()["items"]}
        )
    )
    eventually(
        lambda: (
            "welcome_skin_check"
            in {b["code"] for b in api.get("benefits", f"/v1/members/{mid}/benefits").json()["items"]}
        )
    )
    assert api.get("points", f"/v1/members/{mid}/points").json()["available"] == 120_000
    # the status view agrees though no points event came: it knew when the pending points would be released
    view = api.get("enrollment", f"/v1/members/{mid}/status").json()["points"]
    assert (view["balance"], view["available"], view["pending"]) == (120_000, 120_000, 0)

    # the birth month: a birthday voucher, once
    clock.advance_to(datetime.combine(birth_month, datetime.min.time(), SHANGHAI) + timedelta(hours=9))

    def birthday_vouchers() -> list:
        items = [
            b
            for b in api.get("benefits", f"/v1/members/{mid}/benefits").json()["items"]
            if b["code"] == "birthday_voucher"
        ]
        assert items
        return items

    assert len(eventually(birthday_vouchers)) == 1

    # 30 days before the lots expire (end of the 6th month after day 0): one warning
    expires_on = _month_after(local_start, 7) - timedelta(days=1)
    clock.advance_to(
        datetime.combine(expires_on - timedelta(days=29), datetime.min.time(), SHANGHAI) + timedelta(hours=3)
    )
    eventually(
        lambda: any(
            n["kind"] == "points_expiring"
            for n in api.get("notify", f"/v1/members/{mid}/notifications").json()["items"]
        )
    )

    # the day after expiry: the points are gone
    clock.advance_to(
        datetime.combine(expires_on + timedelta(days=1), datetime.min.time(), SHANGHAI) + timedelta(hours=3)
    )
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points").json()["balance"] == 0)

    # the review, a year after the upgrade: no spend in the trailing year → down one tier
    clock.advance_to(review_at + timedelta(days=1))
    eventually(lambda: api.get("tiering", f"/v1/members/{mid}/tier").json()["code"] == "member", timeout=60)
    history = api.get("tiering", f"/v1/members/{mid}/tier/history").json()["items"]
    assert [(h["from_tier"], h["to_tier"], h["reason"]) for h in history] == [
        ("member", "silver", "qualified"),
        ("silver", "member", "review"),
    ]

    # benefits applies the review's TierChanged on its own, after tiering made it: wait for its view
    def benefits_after_the_review() -> list:
        benefits = api.get("benefits", f"/v1/members/{mid}/benefits").json()["items"]
        by_code = {b["code"]: b for b in benefits}
        # silver's skin check is gone (its tier-year ended with the review) and nothing of silver is active
        assert by_code["annual_skin_check"]["status"] in {"revoked", "expired"}, benefits
        active = {b["code"] for b in benefits if b["status"] == "active"}
        assert "annual_skin_check" not in active and "priority_booking" in active, benefits
        assert by_code["birthday_voucher"]["status"] in {"active", "expired"}, benefits  # never revoked
        return benefits

    benefits = eventually(benefits_after_the_review)
    # the birthday voucher, still once: the schedule has run many times since it first appeared
    assert [b["code"] for b in benefits].count("birthday_voucher") == 1, benefits

    def notification_kinds() -> list[str]:
        items = api.get("notify", f"/v1/members/{mid}/notifications", key=APP).json()["items"]
        kinds = [n["kind"] for n in sorted(items, key=lambda n: n["created_at"]) if n["channel"] == "webhook"]
        assert "tier_down" in kinds
        return kinds

    kinds = eventually(notification_kinds)
    # welcome (enrollment's topic) and tier_up (tiering's) race across topics; the rest is the year's order
    order = ["tier_up", "points_expiring", "tier_down"]
    assert [k for k in kinds if k in order] == order
    assert kinds.count("welcome") == 1 and kinds.index("welcome") < kinds.index("points_expiring")
    assert kinds.count("benefit_granted") >= 3  # skin check, welcome skin check, birthday voucher
    hooks = scenario_webhook.for_member(mid)
    assert hooks and all(WebhookReceiver.signature_ok(h) for h in hooks)

    # the review's BenefitRevoked comes from benefits, not from what was waited for above (tiering,
    # notify): every outbox has to be published before the topics are read
    scenario_stack.wait_settled()
    types = [e.type for e in _events_of(scenario_stack.broker.bootstrap, mid)]
    expected_order = [
        "MemberEnrolled",
        "PurchaseRecorded",
        "TierChanged",
        "BenefitGranted",
        "PointsExpiringSoon",
        "TierChanged",
        "BenefitRevoked",
    ]
    it = iter(types)
    assert all(t in it for t in expected_order), types  # a subsequence, in time order
    assert types.index("PurchaseRecorded") < types.index("PointsChanged") < types.index("PointsExpiringSoon")
    assert types.count("PointsExpiringSoon") == 1
    ref_events = [e for e in _events_of(scenario_stack.broker.bootstrap, rid) if e.type == "ReferralCompleted"]
    assert len(ref_events) == 1 and ref_events[0].data.referee_id == mid and ref_events[0].data.referral_count == 1

"""The main path through the HTTP APIs only: enrol, buy across the silver threshold, and see
points, tier, benefits, a signed webhook notification and the status view agree."""

from __future__ import annotations

import json

import pytest

from devstack.stack import Stack
from tests.helpers import APP, OPS, POS, Api, WebhookReceiver, eventually

pytestmark = pytest.mark.e2e


def test_a_member_buying_past_50000_yuan_becomes_silver_everywhere(
    api: Api, webhook: WebhookReceiver, stack: Stack
) -> None:
    member = api.enrol(consents={"marketing": False, "sms": True, "email": False})
    mid = member["member_id"]
    # 30,000 + 25,000 yuan in the first 30 days: double points, 110,000 in all; spend 55,000 yuan
    api.purchase(mid, 3_000_000)
    api.purchase(mid, 2_500_000)

    def points() -> dict:
        doc = api.get("points", f"/v1/members/{mid}/points", key=APP).json()
        assert doc["balance"] == 110_000, doc
        return doc

    doc = eventually(points)
    assert doc["pending"] == 110_000 and doc["available"] == 0  # inside the 7-day return window

    def tier() -> dict:
        doc = api.get("tiering", f"/v1/members/{mid}/tier", key=APP).json()
        # both purchases and both PointsChanged (another topic) applied: nothing in flight can change the history
        assert doc["code"] == "silver" and doc["progress"]["spend_fen"] == 5_500_000, doc
        assert doc["progress"]["points"] == 110_000, doc
        return doc

    t = eventually(tier)
    assert t["progress"]["next_tier"] == "gold"
    assert t["progress"]["spend_needed_fen"] == 15_000_000 - 5_500_000
    history = api.get("tiering", f"/v1/members/{mid}/tier/history", key=APP).json()["items"]
    assert [(h["from_tier"], h["to_tier"], h["reason"]) for h in history] == [("member", "silver", "qualified")]

    def benefits() -> set[str]:
        items = api.get("benefits", f"/v1/members/{mid}/benefits", key=APP).json()["items"]
        codes = {b["code"] for b in items if b["status"] == "active"}
        assert "annual_skin_check" in codes, codes
        return codes

    codes = eventually(benefits)
    assert {"priority_booking", "annual_skin_check"} <= codes and "dedicated_doctor" not in codes
    discount = api.get("benefits", f"/v1/members/{mid}/discount", key=POS).json()
    assert discount == {"discount_percent": 95, "tier": "silver"}

    def tier_up_delivered() -> list[dict]:
        hooks = [r for r in webhook.for_member(mid) if r["json"]["kind"] == "tier_up"]
        assert hooks
        return hooks

    eventually(tier_up_delivered)

    def notifications() -> list[dict]:
        items = api.get("notify", f"/v1/members/{mid}/notifications", key=APP).json()["items"]
        tier_ups = [n for n in items if n["kind"] == "tier_up"]
        assert {n["channel"] for n in tier_ups} == {"webhook", "sms"} and all(
            n["status"] == "sent" for n in tier_ups
        ), items
        return items

    # "one tier_up webhook" only means something once every event is consumed (every notification
    # queued) and every tier_up sent (a sent webhook notification has reached the receiver)
    stack.wait_settled()
    eventually(notifications)
    hooks = tier_up_delivered()
    assert len(hooks) == 1
    assert WebhookReceiver.signature_ok(hooks[0])
    assert hooks[0]["headers"]["idempotency-key"] == hooks[0]["json"]["notification_id"]

    def status() -> dict:
        doc = api.get("enrollment", f"/v1/members/{mid}/status", key=APP).json()
        assert doc["tier"]["code"] == "silver" and doc["points"]["balance"] == 110_000, doc
        assert {b["code"] for b in doc["benefits"]} == codes, doc
        assert doc["progress"]["spend_fen"] == 5_500_000, doc
        return doc

    s = eventually(status)
    assert (
        s["tier"]["review_at"] == t["review_at"].replace("+00:00", "Z")
        or s["tier"]["review_at"][:19] == t["review_at"][:19]
    )
    assert s["progress"]["next_tier"] == "gold"


def test_the_phone_never_reaches_a_log(api: Api, stack) -> None:
    phone = "13912340000"
    member = api.enrol(phone=phone)
    api.get("enrollment", "/v1/members", key=POS, params={"phone": phone})
    api.get("enrollment", f"/v1/members/{member['member_id']}", key=OPS)
    sms_sink = stack.data_dir / "sink" / "sms.jsonl"

    def welcome_sms_sent() -> bool:
        # the sms provider sink is where the number belongs
        return any(json.loads(line).get("to") == "+86" + phone for line in sms_sink.read_text().splitlines())

    eventually(lambda: sms_sink.exists() and welcome_sms_sent())
    # notify's sms says nothing of the other workers: every one has to have applied MemberEnrolled
    # (which carries the phone) before "not in any log" means anything
    stack.wait_settled()
    for log in stack.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert phone not in text and "1234-0000" not in text and phone[3:] not in text, log.name

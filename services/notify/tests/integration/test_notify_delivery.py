"""Notify end to end: enrollment's API or events straight on the broker in, the webhook receiver,
the SMS/email sinks and notify's API out, against the real PostgreSQL and broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from aiokafka import AIOKafkaConsumer

from devstack.stack import Stack
from shared.events import (
    BenefitGranted,
    CloudEvent,
    Consents,
    EventData,
    MemberEnrolled,
    PointsExpiringSoon,
    ReferralCompleted,
    TierChanged,
    decode,
    new_event,
    topic_of,
)
from tests.helpers import APP, Api, WebhookReceiver, eventually, publish_events

# this service's consumers on their own (with enrollment's intake): other services' reactions to the
# same events would otherwise change what is asserted. The e2e tests run all five together.
pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "notify")]

CHAIN = "demo-chain"


def notifications(api: Api, member_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    r = api.get("notify", f"/v1/members/{member_id}/notifications", key=APP)
    assert r.status_code == 200, r.text
    return [n for n in r.json()["items"] if kind is None or n["kind"] == kind]


def delivered(api: Api, member_id: str, kind: str, channels: set[str]) -> list[dict[str, Any]]:
    """Wait until ``kind`` went out on exactly ``channels``; return those notifications."""

    def check() -> list[dict[str, Any]]:
        items = notifications(api, member_id, kind)
        assert {n["channel"] for n in items} == channels, items
        assert all(n["status"] == "sent" for n in items), items
        return items

    return eventually(check, timeout=30)


def sink_lines(stack: Stack, name: str) -> list[dict[str, Any]]:
    path = Path(stack.data_dir) / "sink" / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def publish(stack: Stack, member_id: str, *events: EventData) -> None:
    publish_events(stack.broker.bootstrap, [new_event(e, member_id=member_id, chain_id=CHAIN) for e in events])


TIER_NAMES = {"member": "普通会员", "silver": "银卡会员", "gold": "金卡会员"}


def tier_changed(
    to_tier: str = "silver", direction: Literal["up", "down", "none"] = "up", from_tier: str = "member"
) -> TierChanged:
    return TierChanged(
        from_tier=from_tier,
        to_tier=to_tier,
        direction=direction,
        reason="qualified",
        policy_version=1,
        effective_at=datetime.now(UTC),
        to_tier_name=TIER_NAMES[to_tier],
    )


def notify_events(stack: Stack, notification_id: str) -> list[CloudEvent]:
    """The events notify published (through its outbox) about one notification."""

    async def go() -> list[CloudEvent]:
        consumer = AIOKafkaConsumer(
            topic_of("notify"),
            bootstrap_servers=stack.broker.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=2000)
            events = [decode(r.value) for records in batch.values() for r in records]
        finally:
            await consumer.stop()
        return [e for e in events if getattr(e.data, "notification_id", None) == notification_id]

    return asyncio.run(go())


def enrol(api: Api, *, sms: bool = True, email: str | None = None) -> tuple[str, str]:
    phone = "139" + str(uuid.uuid4().int)[:8]
    body: dict[str, Any] = {"phone": phone, "consents": {"marketing": False, "sms": sms, "email": email is not None}}
    if email:
        body["email"] = email
    return api.enrol(**body)["member_id"], phone


def test_a_new_member_is_welcomed_on_the_signed_webhook_and_by_sms(
    api: Api, stack: Stack, webhook: WebhookReceiver
) -> None:
    member_id, phone = enrol(api, sms=True)
    sent = {n["channel"]: n for n in delivered(api, member_id, "welcome", {"webhook", "sms"})}
    assert sent["webhook"]["attempts"] == 1 and sent["webhook"]["sent_at"]

    [request] = [r for r in webhook.for_member(member_id) if r["json"]["kind"] == "welcome"]
    assert WebhookReceiver.signature_ok(request)
    assert request["headers"]["idempotency-key"] == sent["webhook"]["notification_id"]
    assert request["json"]["title"] == "欢迎加入会员计划" and request["json"]["locale"] == "zh-CN"

    [sms] = [s for s in sink_lines(stack, "sms.jsonl") if s["notification_id"] == sent["sms"]["notification_id"]]
    assert sms["to"] == "+86" + phone and "欢迎" in sms["text"]


def test_a_tier_upgrade_goes_out_once_per_consented_channel_even_when_the_event_repeats(
    api: Api, stack: Stack, webhook: WebhookReceiver
) -> None:
    member_id, _ = enrol(api, sms=True, email="li@example.com")
    delivered(api, member_id, "welcome", {"webhook", "sms", "email"})
    upgrade = new_event(tier_changed("silver"), member_id=member_id, chain_id=CHAIN)
    publish_events(stack.broker.bootstrap, [upgrade, upgrade])
    first = delivered(api, member_id, "tier_up", {"webhook", "sms", "email"})
    assert all("银卡会员" in n["title"] for n in first)

    # the same event once more, then a later one on the same partition: once the later one is
    # delivered, the repeat has been consumed too, and it queued nothing
    later = new_event(tier_changed("gold", from_tier="silver"), member_id=member_id, chain_id=CHAIN)
    publish_events(stack.broker.bootstrap, [upgrade, later])
    eventually(lambda: len(notifications(api, member_id, "tier_up")) == 6)
    both = delivered(api, member_id, "tier_up", {"webhook", "sms", "email"})
    assert sorted(n["title"] for n in both if n["channel"] == "webhook") == ["恭喜升级为金卡会员", "恭喜升级为银卡会员"]
    hooks = [r for r in webhook.for_member(member_id) if r["json"]["kind"] == "tier_up"]
    assert len(hooks) == 2 and len({r["json"]["notification_id"] for r in hooks}) == 2
    emails = [e for e in sink_lines(stack, "email.jsonl") if e["to"] == "li@example.com"]
    assert len(emails) == 3  # welcome and two upgrades


def test_an_event_that_overtakes_the_enrolment_waits_for_it_and_then_reaches_every_consented_channel(
    api: Api, stack: Stack, webhook: WebhookReceiver
) -> None:
    member_id = str(uuid.uuid4())
    # the upgrade arrives first (tiering's topic can run ahead of enrollment's)
    publish(stack, member_id, tier_changed("silver"))
    stack.wait_settled()
    assert api.get("notify", f"/v1/members/{member_id}/notifications", key=APP).status_code == 404
    assert [r for r in webhook.for_member(member_id)] == []  # nothing went out without the consents
    phone = "139" + str(uuid.uuid4().int)[:8]
    publish(
        stack,
        member_id,
        MemberEnrolled(
            member_id=member_id,
            member_no="M000000001",
            home_clinic_id="clinic-1",
            source="walk_in",
            birthday=date(1990, 6, 15),
            enrolled_at=datetime.now(UTC),
            name="王女士",
            phone=phone,
            consents=Consents(marketing=False, sms=True, email=False),
        ),
    )
    delivered(api, member_id, "welcome", {"webhook", "sms"})
    up = {n["channel"]: n for n in delivered(api, member_id, "tier_up", {"webhook", "sms"})}
    assert "银卡会员" in up["webhook"]["title"]
    [sms] = [s for s in sink_lines(stack, "sms.jsonl") if s["notification_id"] == up["sms"]["notification_id"]]
    assert sms["to"] == phone  # as the event carried it
    stack.wait_settled()  # the parked event is handled once: exactly one tier_up per channel
    assert len(notifications(api, member_id, "tier_up")) == 2


async def test_parked_events_of_a_member_who_never_enrols_are_dropped_after_30_days(stack: Stack) -> None:
    from datetime import timedelta

    from notify.jobs import purge_parked
    from notify.tables import parked_events
    from notify.tables import shared as notify_tables
    from shared.db import Database

    db = Database.connect(stack.settings(), notify_tables)
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        async with db.unit_of_work() as uow:
            for event_id, age in ((old, timedelta(days=31)), (recent, timedelta(days=29))):
                await uow.execute(
                    parked_events.insert().values(
                        event_id=event_id,
                        member_id=str(uuid.uuid4()),
                        chain_id=CHAIN,
                        payload="{}",
                        parked_at=uow.now() - age,
                    )
                )
        assert await purge_parked(db) >= 1
        async with db.unit_of_work() as uow:
            left = set(
                (
                    await uow.execute(
                        parked_events.select()
                        .with_only_columns(parked_events.c.event_id)
                        .where(parked_events.c.event_id.in_([old, recent]))
                    )
                ).scalars()
            )
    finally:
        await db.dispose()
    assert left == {recent}


def test_a_member_without_sms_consent_gets_no_sms(api: Api, stack: Stack) -> None:
    member_id, phone = enrol(api, sms=False)
    delivered(api, member_id, "welcome", {"webhook"})
    publish(stack, member_id, tier_changed("silver"))
    delivered(api, member_id, "tier_up", {"webhook"})
    assert not [s for s in sink_lines(stack, "sms.jsonl") if s["to"] == "+86" + phone]


def test_a_no_change_tier_event_notifies_nobody_and_a_downgrade_does(api: Api, stack: Stack) -> None:
    member_id, _ = enrol(api, sms=False)
    delivered(api, member_id, "welcome", {"webhook"})
    publish(
        stack,
        member_id,
        tier_changed("silver", direction="none", from_tier="silver"),
        tier_changed("member", direction="down", from_tier="silver"),
    )
    delivered(api, member_id, "tier_down", {"webhook"})
    assert {n["kind"] for n in notifications(api, member_id)} == {"welcome", "tier_down"}


def test_a_failing_webhook_gets_the_notification_on_a_retry(api: Api, stack: Stack, webhook: WebhookReceiver) -> None:
    member_id, _ = enrol(api, sms=True)
    delivered(api, member_id, "welcome", {"webhook", "sms"})
    r = api.put("notify", f"/v1/members/{member_id}/preferences", {"channels": ["webhook"], "locale": "zh-CN"})
    assert r.status_code == 200, r.text
    webhook.fail_next = 2
    publish(stack, member_id, tier_changed("silver"))
    [sent] = delivered(api, member_id, "tier_up", {"webhook"})
    assert sent["attempts"] == 3 and webhook.fail_next == 0
    [request] = [r for r in webhook.for_member(member_id) if r["json"]["kind"] == "tier_up"]
    assert request["headers"]["idempotency-key"] == sent["notification_id"]
    [event] = eventually(lambda: notify_events(stack, sent["notification_id"]))
    assert (event.type, event.subject, event.data.attempts) == ("NotificationSent", member_id, 3)


def test_a_webhook_that_keeps_failing_is_given_up_after_the_last_attempt(
    api: Api, stack: Stack, webhook: WebhookReceiver
) -> None:
    member_id, _ = enrol(api, sms=False)
    delivered(api, member_id, "welcome", {"webhook"})
    webhook.fail_next = 5  # settings.notify_max_attempts; retries 0.2, 0.4, 0.8, 1.6 s apart in the suite

    publish(stack, member_id, tier_changed("silver"))

    def given_up() -> dict[str, Any]:
        items = notifications(api, member_id, "tier_up")
        assert len(items) == 1 and items[0]["status"] == "failed", items
        return items[0]

    failed = eventually(given_up, timeout=30)
    assert failed["attempts"] == 5 and "503" in failed["last_error"] and failed["sent_at"] is None
    assert not [r for r in webhook.for_member(member_id) if r["json"]["kind"] == "tier_up"]
    [event] = eventually(lambda: notify_events(stack, failed["notification_id"]))
    assert event.type == "NotificationFailed" and event.data.attempts == 5 and "503" in event.data.error


def test_english_preferences_render_english(api: Api, stack: Stack, webhook: WebhookReceiver) -> None:
    member_id, _ = enrol(api, sms=True)
    delivered(api, member_id, "welcome", {"webhook", "sms"})
    prefs = {"channels": ["sms", "webhook"], "locale": "en", "quiet_hours": {"start": "23:00", "end": "07:30"}}
    r = api.put("notify", f"/v1/members/{member_id}/preferences", prefs)
    assert r.status_code == 200, r.text
    stored = {
        "member_id": member_id,
        "channels": ["webhook", "sms"],
        "locale": "en",
        "quiet_hours": {"start": "23:00", "end": "07:30"},
    }
    assert r.json() == stored
    assert api.get("notify", f"/v1/members/{member_id}/preferences").json() == stored

    publish(stack, member_id, tier_changed("silver"))
    sent = delivered(api, member_id, "tier_up", {"webhook", "sms"})
    assert {n["title"] for n in sent} == {"You are now Silver"}
    [request] = [r for r in webhook.for_member(member_id) if r["json"]["kind"] == "tier_up"]
    assert request["json"]["locale"] == "en" and "upgraded to Silver" in request["json"]["body"]


def test_benefits_expiring_points_and_referrals_are_notified(api: Api, stack: Stack, webhook: WebhookReceiver) -> None:
    member_id, _ = enrol(api, sms=False)
    referee_id, _ = enrol(api, sms=False)
    delivered(api, member_id, "welcome", {"webhook"})
    publish(
        stack,
        member_id,
        BenefitGranted(benefit_id=str(uuid.uuid4()), code="annual_skin_check", remaining_uses=1),
        PointsExpiringSoon(points=1200, expires_on=date(2026, 3, 31)),
    )
    # enrollment publishes ReferralCompleted under the referee; the message is for the referrer
    publish(
        stack,
        referee_id,
        ReferralCompleted(
            referrer_id=member_id,
            referee_id=referee_id,
            purchase_id=str(uuid.uuid4()),
            completed_at=datetime.now(UTC),
            referral_count=1,
        ),
    )
    [benefit] = delivered(api, member_id, "benefit_granted", {"webhook"})
    [expiring] = delivered(api, member_id, "points_expiring", {"webhook"})
    delivered(api, member_id, "referral_completed", {"webhook"})
    assert benefit["title"] == "您获得了新权益：年度皮肤检测" and expiring["title"] == "1200 积分即将过期"
    delivered(api, referee_id, "welcome", {"webhook"})  # notify knows the referee too (another partition)
    stack.wait_settled()
    assert not notifications(api, referee_id, "referral_completed")
    hooks = {r["json"]["kind"]: r["json"] for r in webhook.for_member(member_id)}
    assert "2026-03-31" in hooks["points_expiring"]["body"] and hooks["points_expiring"]["data"]["points"] == 1200


def test_notifications_are_listed_newest_first(api: Api, stack: Stack) -> None:
    member_id, _ = enrol(api, sms=False)
    delivered(api, member_id, "welcome", {"webhook"})
    publish(stack, member_id, tier_changed("silver"))
    delivered(api, member_id, "tier_up", {"webhook"})
    items = notifications(api, member_id)
    assert [n["kind"] for n in items] == ["tier_up", "welcome"]
    assert items[0]["created_at"] >= items[1]["created_at"]
    assert set(items[0]) >= {"notification_id", "kind", "channel", "status", "attempts", "created_at"}

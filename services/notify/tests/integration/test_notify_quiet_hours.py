"""Marketing (a voucher) waits out quiet hours and needs the marketing consent; transactional
notifications go out at once. Events straight on the broker, the platform clock moved through
its offset file, the webhook receiver, the SMS sink and notify's API out."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.stack import Stack
from shared.clock import OffsetFileClock
from shared.events import BenefitGranted, EventData, TierChanged, new_event
from tests.helpers import APP, Api, WebhookReceiver, eventually, publish_events

# this service's consumers on their own (with enrollment's intake), as in the other notify modules
pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "notify")]

CHAIN = "demo-chain"
SHANGHAI = ZoneInfo("Asia/Shanghai")


# ---- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def clock(stack: Stack) -> Iterator[OffsetFileClock]:
    """The platform clock every process of the stack reads; back to real time after the test."""
    c = OffsetFileClock(Path(stack.data_dir) / "clock-offset")
    try:
        yield c
    finally:
        c.set_offset(0)


def notifications(api: Api, member_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    r = api.get("notify", f"/v1/members/{member_id}/notifications", key=APP)
    assert r.status_code == 200, r.text
    return [n for n in r.json()["items"] if kind is None or n["kind"] == kind]


def with_status(api: Api, member_id: str, kind: str, channels: set[str], status: str) -> list[dict[str, Any]]:
    """Wait until ``kind`` is on exactly ``channels``, all with ``status``; return them."""

    def check() -> list[dict[str, Any]]:
        items = notifications(api, member_id, kind)
        assert {n["channel"] for n in items} == channels, items
        assert all(n["status"] == status for n in items), items
        return items

    return eventually(check, timeout=30)


def sink_lines(stack: Stack, name: str) -> list[dict[str, Any]]:
    path = Path(stack.data_dir) / "sink" / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def publish(stack: Stack, member_id: str, *events: EventData) -> None:
    publish_events(stack.broker.bootstrap, [new_event(e, member_id=member_id, chain_id=CHAIN) for e in events])


def enrol(api: Api, *, marketing: bool) -> tuple[str, str]:
    phone = "139" + str(uuid.uuid4().int)[:8]
    member_id = api.enrol(phone=phone, consents={"marketing": marketing, "sms": True, "email": False})["member_id"]
    with_status(api, member_id, "welcome", {"webhook", "sms"}, "sent")
    return member_id, phone


def quiet_around_now(api: Api, member_id: str) -> datetime:
    """Quiet hours from an hour ago to an hour from now (Shanghai time; past midnight when now is
    late in the evening); returns when they end."""
    now = datetime.now(SHANGHAI)
    start, end = now - timedelta(hours=1), (now + timedelta(hours=1)).replace(second=0, microsecond=0)
    prefs = {
        "channels": ["webhook", "sms"],
        "locale": "zh-CN",
        "quiet_hours": {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")},
    }
    r = api.put("notify", f"/v1/members/{member_id}/preferences", prefs)
    assert r.status_code == 200, r.text
    return end


def voucher(value_fen: int = 50_000) -> BenefitGranted:
    until = datetime(2031, 7, 1, tzinfo=SHANGHAI).astimezone(UTC)  # usable through 30 June, local
    return BenefitGranted(
        benefit_id=str(uuid.uuid4()), code="birthday_voucher", remaining_uses=1, value_fen=value_fen, valid_until=until
    )


def skin_check() -> BenefitGranted:
    return BenefitGranted(benefit_id=str(uuid.uuid4()), code="annual_skin_check", remaining_uses=1)


def tier_up() -> TierChanged:
    return TierChanged(
        from_tier="member",
        to_tier="silver",
        direction="up",
        reason="qualified",
        policy_version=1,
        effective_at=datetime.now(UTC),
        to_tier_name="银卡会员",
    )


def hooks_of(webhook: WebhookReceiver, member_id: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in webhook.for_member(member_id) if r["json"]["kind"] == kind]


def sms_of(stack: Stack, notification_ids: set[str]) -> list[dict[str, Any]]:
    return [s for s in sink_lines(stack, "sms.jsonl") if s["notification_id"] in notification_ids]


def move_past(clock: OffsetFileClock, when: datetime) -> None:
    clock.set_offset((when - datetime.now(UTC)).total_seconds() + 60)


def marketing_consent(stack: Stack, member_id: str) -> bool:
    """What notify's contact projection holds (the precondition of a withdrawal test)."""

    async def go() -> bool:
        engine = create_async_engine(stack.postgres.url)
        try:
            async with engine.connect() as conn:
                return bool(
                    await conn.scalar(
                        text("SELECT (consents->>'marketing')::boolean FROM notify.contacts WHERE member_id = :m"),
                        {"m": member_id},
                    )
                )
        finally:
            await engine.dispose()

    return asyncio.run(go())


# ---- tests ------------------------------------------------------------------------------------


def test_a_voucher_waits_out_quiet_hours_while_a_tier_upgrade_goes_out_at_once(
    api: Api, stack: Stack, webhook: WebhookReceiver, clock: OffsetFileClock
) -> None:
    member_id, phone = enrol(api, marketing=True)
    quiet_end = quiet_around_now(api, member_id)

    publish(stack, member_id, voucher(), tier_up())
    held = with_status(api, member_id, "voucher_granted", {"webhook", "sms"}, "pending")
    with_status(api, member_id, "tier_up", {"webhook", "sms"}, "sent")
    assert all(datetime.fromisoformat(n["next_attempt_at"]) == quiet_end for n in held), held
    assert all(n["attempts"] == 0 and n["sent_at"] is None for n in held)

    # a benefit granted after the voucher (same topic and member: consumed in order) is delivered,
    # so deliveries ran while the voucher was due-if-not-held: it was held, not just slow
    publish(stack, member_id, skin_check())
    with_status(api, member_id, "benefit_granted", {"webhook", "sms"}, "sent")
    still = with_status(api, member_id, "voucher_granted", {"webhook", "sms"}, "pending")
    assert not hooks_of(webhook, member_id, "voucher_granted")
    assert not sms_of(stack, {n["notification_id"] for n in still})

    move_past(clock, quiet_end)
    sent = with_status(api, member_id, "voucher_granted", {"webhook", "sms"}, "sent")
    assert all(datetime.fromisoformat(n["sent_at"]) >= quiet_end and n["next_attempt_at"] is None for n in sent)
    [hook] = hooks_of(webhook, member_id, "voucher_granted")
    assert WebhookReceiver.signature_ok(hook)
    assert hook["json"]["data"]["value_fen"] == 50_000 and hook["json"]["data"]["marketing"] is True
    assert "500元生日礼券" in hook["json"]["body"] and "有效期至2031-06-30" in hook["json"]["body"]
    [sms] = sms_of(stack, {n["notification_id"] for n in sent if n["channel"] == "sms"})
    assert sms["to"] == "+86" + phone and "500元生日礼券" in sms["text"]


def test_a_member_without_marketing_consent_never_gets_a_voucher_message(
    api: Api, stack: Stack, webhook: WebhookReceiver
) -> None:
    member_id, phone = enrol(api, marketing=False)
    r = api.put(
        "notify",
        f"/v1/members/{member_id}/preferences",
        {"channels": ["webhook", "sms"], "locale": "zh-CN", "quiet_hours": None},
    )
    assert r.status_code == 200, r.text

    # the skin check follows the voucher on the same partition: once it is out, the voucher was consumed
    publish(stack, member_id, voucher(), skin_check())
    with_status(api, member_id, "benefit_granted", {"webhook", "sms"}, "sent")
    assert not notifications(api, member_id, "voucher_granted")
    assert not hooks_of(webhook, member_id, "voucher_granted")
    assert not [s for s in sink_lines(stack, "sms.jsonl") if s["to"] == "+86" + phone and "礼券" in s["text"]]


def test_a_held_voucher_is_never_sent_once_the_member_withdraws_marketing_consent(
    api: Api, stack: Stack, webhook: WebhookReceiver, clock: OffsetFileClock
) -> None:
    member_id, _phone = enrol(api, marketing=True)
    quiet_end = quiet_around_now(api, member_id)
    publish(stack, member_id, voucher())
    with_status(api, member_id, "voucher_granted", {"webhook", "sms"}, "pending")

    r = api.patch(
        "enrollment", f"/v1/members/{member_id}", {"consents": {"marketing": False, "sms": True, "email": False}}
    )
    assert r.status_code == 200, r.text
    eventually(lambda: not marketing_consent(stack, member_id))

    move_past(clock, quiet_end)
    failed = with_status(api, member_id, "voucher_granted", {"webhook", "sms"}, "failed")
    assert all(n["last_error"] == "no marketing consent" and n["sent_at"] is None for n in failed)
    assert not hooks_of(webhook, member_id, "voucher_granted")
    assert not sms_of(stack, {n["notification_id"] for n in failed})

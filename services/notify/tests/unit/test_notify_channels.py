"""The channel adapters: what a chain's backend, the SMS sink and an SMTP server receive."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from devstack.processes import free_port
from notify.channels import DeliveryFailed, EmailChannel, JsonlSink, SmsChannel, Undeliverable, WebhookChannel
from notify.domain import Consents, Contact, Notification
from shared.platform import Chain
from shared.settings import Settings

N = Notification(
    notification_id="n-1",
    member_id="m-1",
    chain_id="c-1",
    kind="tier_up",
    channel="webhook",
    locale="zh-CN",
    title="恭喜升级为银卡会员",
    body="王，恭喜您升级为银卡会员！",
    data={"to_tier": "silver"},
    created_at=datetime(2025, 1, 1, tzinfo=UTC),
)
CONTACT = Contact(name="王", phone="13800001234", email="wang@example.com", consents=Consents(sms=True, email=True))
CHAIN = Chain("c-1", "Demo", "Asia/Shanghai", "https://hooks.example/membership", "s3cret")


def _webhook(status: int, seen: list[httpx.Request], tmp_path: Path) -> WebhookChannel:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    return WebhookChannel(httpx.AsyncClient(transport=httpx.MockTransport(handler)), JsonlSink(tmp_path))


async def test_the_webhook_body_is_signed_and_carries_the_notification_id(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    await _webhook(200, seen, tmp_path).send(N, CONTACT, CHAIN)
    [request] = seen
    body = request.content
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert request.headers["X-Membership-Signature"] == f"sha256={expected}"
    assert request.headers["Idempotency-Key"] == "n-1" == request.headers["X-Membership-Notification-Id"]
    doc = json.loads(body)
    assert doc["notification_id"] == "n-1" and doc["title"] == N.title and doc["data"] == {"to_tier": "silver"}
    assert "13800001234" not in body.decode()


async def test_a_webhook_answering_non_2xx_is_a_failure(tmp_path: Path) -> None:
    with pytest.raises(DeliveryFailed, match="503"):
        await _webhook(503, [], tmp_path).send(N, CONTACT, CHAIN)


async def test_a_chain_without_a_webhook_url_gets_the_local_sink(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    no_url = Chain("c-1", "Demo", "Asia/Shanghai", None, None)
    await _webhook(200, seen, tmp_path).send(N, CONTACT, no_url)
    assert seen == []
    [line] = (tmp_path / "webhook.jsonl").read_text().splitlines()
    assert json.loads(line)["notification_id"] == "n-1"


async def test_sms_goes_to_the_provider_sink_with_the_phone(tmp_path: Path) -> None:
    await SmsChannel(JsonlSink(tmp_path)).send(N, CONTACT, CHAIN)
    [line] = (tmp_path / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    doc = json.loads(line)
    assert doc["to"] == "13800001234" and doc["notification_id"] == "n-1" and N.body in doc["text"]


async def test_sms_without_a_phone_is_undeliverable(tmp_path: Path) -> None:
    with pytest.raises(Undeliverable):
        await SmsChannel(JsonlSink(tmp_path)).send(N, Contact(consents=Consents(sms=True)), CHAIN)


async def test_email_without_smtp_goes_to_the_sink(tmp_path: Path) -> None:
    await EmailChannel(Settings(smtp_host=None), JsonlSink(tmp_path)).send(N, CONTACT, CHAIN)
    doc = json.loads((tmp_path / "email.jsonl").read_text(encoding="utf-8"))
    assert doc["to"] == "wang@example.com" and doc["subject"] == N.title


async def test_email_is_sent_over_smtp_when_a_host_is_configured(tmp_path: Path) -> None:
    from aiosmtpd.controller import Controller

    received: list[tuple[str, list[str], bytes]] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_from="club@example.com")
        await EmailChannel(settings, JsonlSink(tmp_path)).send(N, CONTACT, CHAIN)
    finally:
        controller.stop()
    [(sender, rcpts, content)] = received
    assert sender == "club@example.com" and rcpts == ["wang@example.com"]
    assert b"Subject:" in content and not (tmp_path / "email.jsonl").exists()


async def test_an_unreachable_smtp_server_is_a_failure(tmp_path: Path) -> None:
    settings = Settings(smtp_host="127.0.0.1", smtp_port=1)
    with pytest.raises(DeliveryFailed):
        await EmailChannel(settings, JsonlSink(tmp_path)).send(N, CONTACT, CHAIN)

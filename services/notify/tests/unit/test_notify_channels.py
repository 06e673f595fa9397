"""The channel adapters: what a chain's backend, the SMS sink and an SMTP server receive."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from devstack.processes import free_port
from notify.channels import (
    DeliveryFailed,
    EmailChannel,
    JsonlSink,
    SmsChannel,
    Undeliverable,
    WebhookChannel,
    signed_headers,
)
from notify.domain import Consents, Contact, Notification
from shared.platform import Chain
from shared.settings import Settings
from tests.helpers import WebhookReceiver

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
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CHAIN = Chain("c-1", "Demo", "Asia/Shanghai", "https://hooks.example/membership", SECRET)


def _webhook(status: int, seen: list[httpx.Request], tmp_path: Path) -> WebhookChannel:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status)

    return WebhookChannel(httpx.AsyncClient(transport=httpx.MockTransport(handler)), JsonlSink(tmp_path))


async def test_the_webhook_is_signed_the_standard_webhooks_way_and_carries_the_notification_id(
    tmp_path: Path,
) -> None:
    seen: list[httpx.Request] = []
    await _webhook(200, seen, tmp_path).send(N, CONTACT, CHAIN)
    [request] = seen
    body = request.content
    assert Webhook(SECRET).verify(body, dict(request.headers)) == json.loads(body)  # the receiver's library
    assert request.headers["webhook-id"] == "n-1" == request.headers["Idempotency-Key"]
    assert abs(int(request.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    assert request.headers["webhook-signature"].startswith("v1,")
    with pytest.raises(WebhookVerificationError):  # another chain's secret does not verify it
        Webhook("whsec_" + "QUJD" * 8).verify(body, dict(request.headers))
    doc = json.loads(body)
    assert doc["notification_id"] == "n-1" and doc["title"] == N.title and doc["data"] == {"to_tier": "silver"}
    assert "13800001234" not in body.decode()


async def _delivered(tmp_path: Path) -> httpx.Request:
    seen: list[httpx.Request] = []
    await _webhook(200, seen, tmp_path).send(N, CONTACT, CHAIN)
    return seen[0]


async def test_a_replayed_delivery_is_not_processed_a_second_time(tmp_path: Path) -> None:
    """Attack: someone who captured a delivery sends it again at once (same id, valid signature)."""
    receiver = WebhookReceiver(SECRET)
    try:
        request = await _delivered(tmp_path)
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert receiver.receive(headers, request.content) == 200
        assert receiver.receive(headers, request.content) == 200  # acknowledged ...
        assert len(receiver.requests) == 1  # ... but processed once
        assert [r["reason"] for r in receiver.rejected] == ["webhook-id already processed"]
    finally:
        receiver.close()


async def test_a_replayed_old_delivery_and_forged_variants_are_rejected(tmp_path: Path) -> None:
    """Attack: replays of a delivery captured 10 minutes ago (its signature valid for its own timestamp),
    with its timestamp moved to now, with another body, or signed with a guessed secret: all refused
    (401) by the standardwebhooks check, none processed, even under a fresh webhook-id."""
    receiver = WebhookReceiver(SECRET)
    try:
        request = await _delivered(tmp_path)
        body = request.content
        old = signed_headers(SECRET, "n-old", body, datetime.now(UTC) - timedelta(minutes=10))
        assert receiver.receive(old, body) == 401
        moved = {**old, "webhook-timestamp": str(int(datetime.now(UTC).timestamp()))}
        assert receiver.receive(moved, body) == 401
        fresh = signed_headers(SECRET, "n-2", body, datetime.now(UTC))
        assert receiver.receive(fresh, body.replace(b"silver", b"diamond")) == 401
        guessed = signed_headers("whsec_" + "QUJD" * 8, "n-3", body, datetime.now(UTC))
        assert receiver.receive(guessed, body) == 401
        unsigned = {k: v for k, v in fresh.items() if k != "webhook-signature"}
        assert receiver.receive(unsigned, body) == 401
        future = signed_headers(SECRET, "n-4", body, datetime.now(UTC) + timedelta(minutes=10))
        assert receiver.receive(future, body) == 401
        assert receiver.requests == []
        reasons = [r["reason"] for r in receiver.rejected]
        assert reasons[0] == "Message timestamp too old" and reasons[-1] == "Message timestamp too new"
        assert receiver.receive(fresh, body) == 200 and len(receiver.requests) == 1  # the genuine one passes
    finally:
        receiver.close()


async def test_in_production_a_chain_without_a_webhook_secret_gets_nothing_unsigned(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    unsigned = Chain("c-1", "Demo", "Asia/Shanghai", "https://hooks.example/membership", None)
    with pytest.raises(Undeliverable, match="no webhook secret"):
        await WebhookChannel(client, JsonlSink(tmp_path), require_signature=True).send(N, CONTACT, unsigned)
    assert seen == []


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

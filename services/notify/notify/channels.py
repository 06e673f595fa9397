"""Delivery channels behind one small interface: ``await channel.send(notification, contact, chain)``
returns when the message is handed over and raises :class:`DeliveryFailed` (or anything) when not.

The embedded default has no SMS provider and usually no SMTP server or webhook URL: those
channels then append one JSON line per message to a file in the local sink folder.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import httpx
from standardwebhooks import Webhook

from shared.platform import Chain
from shared.settings import Settings

from .domain import Channel, Contact, Notification

#: a delivery attempt holds the claimed row's lock: keep every attempt short
ATTEMPT_TIMEOUT_SECONDS = 5.0


class DeliveryFailed(Exception):
    """The channel did not take the message; it may be tried again."""


class Undeliverable(DeliveryFailed):
    """Trying again cannot help (no address, consent withdrawn): give up at once."""


class DeliveryChannel(Protocol):
    async def send(self, notification: Notification, contact: Contact | None, chain: Chain | None) -> None: ...


class JsonlSink:
    """Appends one JSON document per line to ``<folder>/<name>``: the embedded default's provider."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _append(self, name: str, line: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # one write() of a whole line in append mode: concurrent writers never interleave inside a line
        with open(self.folder / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    async def append(self, name: str, doc: dict[str, Any]) -> None:
        await asyncio.to_thread(self._append, name, json.dumps(doc, ensure_ascii=False, default=str))


def signed_headers(secret: str, message_id: str, body: bytes, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers (https://www.standardwebhooks.com): ``webhook-id``,
    ``webhook-timestamp`` (Unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of
    "id.timestamp.body">``, keyed with the chain's ``whsec_`` secret)."""
    at = at.astimezone(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body.decode()),
    }


class WebhookChannel:
    """POSTs the notification to the chain's backend, signed with the chain's secret as Standard
    Webhooks prescribe: the receiver verifies the signature with its ``standardwebhooks`` library,
    refuses a timestamp more than 5 minutes off, and drops a ``webhook-id`` it has seen.

    The ``webhook-id`` (and ``Idempotency-Key``) is the notification id, the same on every attempt:
    a delivery whose success could not be recorded (the process died before the commit) is sent
    again, and the receiver drops it. Each attempt is signed anew with the time it is sent.
    """

    def __init__(self, client: httpx.AsyncClient, sink: JsonlSink, *, require_signature: bool = False) -> None:
        self.client = client
        self.sink = sink
        #: production: a chain with a webhook URL but no secret gets nothing unsigned
        self.require_signature = require_signature

    async def send(self, notification: Notification, contact: Contact | None, chain: Chain | None) -> None:
        doc = notification.document()
        if chain is None or not chain.webhook_url:
            await self.sink.append("webhook.jsonl", doc)
            return
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": notification.notification_id,
            "X-Membership-Notification-Id": notification.notification_id,
        }
        if chain.webhook_secret_error:
            raise DeliveryFailed(f"the chain's webhook secret is unusable: {chain.webhook_secret_error}")
        if chain.webhook_secret:
            headers.update(signed_headers(chain.webhook_secret, notification.notification_id, body, datetime.now(UTC)))
        elif self.require_signature:
            raise Undeliverable("the chain has a webhook URL but no webhook secret: nothing is sent unsigned")
        try:
            response = await self.client.post(
                chain.webhook_url, content=body, headers=headers, timeout=ATTEMPT_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook unreachable: {type(exc).__name__}") from exc
        if not response.is_success:
            raise DeliveryFailed(f"webhook answered HTTP {response.status_code}")


class SmsChannel:
    """The local SMS provider: the phone number is written only to the provider's sink."""

    def __init__(self, sink: JsonlSink) -> None:
        self.sink = sink

    async def send(self, notification: Notification, contact: Contact | None, chain: Chain | None) -> None:
        if contact is None or not contact.phone:
            raise Undeliverable("no phone number for this member")
        await self.sink.append(
            "sms.jsonl",
            {
                "notification_id": notification.notification_id,
                "to": contact.phone,
                "text": f"【{notification.title}】{notification.body}",
            },
        )


class EmailChannel:
    """SMTP when ``smtp_host`` is set, else the local sink."""

    def __init__(self, settings: Settings, sink: JsonlSink) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.sender = settings.smtp_from
        self.sink = sink

    def _message(self, notification: Notification, to: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = notification.title
        msg["Message-ID"] = f"<{notification.notification_id}@membership>"
        msg.set_content(notification.body)
        return msg

    def _smtp_send(self, msg: EmailMessage) -> None:
        assert self.host is not None
        with smtplib.SMTP(self.host, self.port, timeout=ATTEMPT_TIMEOUT_SECONDS) as smtp:
            smtp.send_message(msg)

    async def send(self, notification: Notification, contact: Contact | None, chain: Chain | None) -> None:
        if contact is None or not contact.email:
            raise Undeliverable("no email address for this member")
        msg = self._message(notification, contact.email)
        if self.host is None:
            await self.sink.append(
                "email.jsonl",
                {
                    "notification_id": notification.notification_id,
                    "to": contact.email,
                    "subject": notification.title,
                    "text": notification.body,
                },
            )
            return
        try:
            await asyncio.to_thread(self._smtp_send, msg)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"smtp: {type(exc).__name__}") from exc


def sink_dir(settings: Settings) -> Path:
    return settings.notify_sink_dir or settings.data_dir / "sink"


def default_channels(settings: Settings) -> dict[Channel, DeliveryChannel]:
    sink = JsonlSink(sink_dir(settings))
    client = httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_SECONDS, follow_redirects=False)
    webhook = WebhookChannel(client, sink, require_signature=settings.is_production)
    return {"webhook": webhook, "sms": SmsChannel(sink), "email": EmailChannel(settings, sink)}

"""Delivery channels behind one small interface: ``await channel.send(notification, contact, chain)``
returns when the message is handed over and raises :class:`DeliveryFailed` (or anything) when not.

The embedded default has no SMS provider and usually no SMTP server or webhook URL: those
channels then append one JSON line per message to a file in the local sink folder.

SMS has two providers, chosen by ``MEMBERSHIP_SMS_PROVIDER`` (:func:`sms_channel`): ``sink``, the local
file sink (development; production refuses it for notify's worker, :func:`production_problems`), and
``http``, a provider's HTTP API (:class:`HttpSmsChannel`).

A channel never retries by itself: a :class:`DeliveryFailed` is retried by the delivery job with its
backoff (``MEMBERSHIP_NOTIFY_MAX_ATTEMPTS``, ``MEMBERSHIP_NOTIFY_RETRY_BASE_SECONDS``), an
:class:`Undeliverable` fails the notification at once (:mod:`notify.delivery`).
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
    """The local SMS sink (``MEMBERSHIP_SMS_PROVIDER=sink``, development only): the phone number is
    written only to the sink's file."""

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


#: provider answers that say "not now" rather than "never": timeout, conflict (a previous attempt with the
#: same idempotency key still in progress), too early, too many requests. Every other 4xx is permanent.
TRANSIENT_4XX = frozenset({408, 409, 425, 429})


class HttpSmsChannel:
    """An SMS provider's HTTP API (``MEMBERSHIP_SMS_PROVIDER=http``): one POST of a JSON message
    ``{"message_id", "to", "text"}`` to ``MEMBERSHIP_SMS_HTTP_URL``, with the credential
    ``MEMBERSHIP_SMS_HTTP_TOKEN`` (``Authorization: Bearer <token>``, or the token in
    ``MEMBERSHIP_SMS_HTTP_AUTH_HEADER``) and ``Idempotency-Key: <notification id>``, the same on every
    attempt, so a provider that honours it sends one SMS however often a delivery is retried.

    Outcomes: 2xx delivered; 408/409/425/429, 5xx, other statuses, timeouts and connection errors are
    transient (:class:`DeliveryFailed`, retried by the delivery job with its backoff); any other 4xx is
    permanent (:class:`Undeliverable`: the request itself is wrong, e.g. a number the provider refuses).
    Errors name the status or the exception's type only: never the phone number, nor the provider's
    answer (which may echo it).
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str,
        token: str | None,
        auth_header: str = "Authorization",
        timeout_seconds: float = ATTEMPT_TIMEOUT_SECONDS - 1,
    ) -> None:
        self.client = client
        self.url = url
        self.token = token
        self.auth_header = auth_header
        self.timeout = timeout_seconds

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.AsyncClient) -> HttpSmsChannel:
        if not settings.sms_http_url:
            raise ValueError("MEMBERSHIP_SMS_PROVIDER=http needs MEMBERSHIP_SMS_HTTP_URL")
        token = settings.sms_http_token.get_secret_value() if settings.sms_http_token else None
        return cls(
            client,
            url=settings.sms_http_url,
            token=token,
            auth_header=settings.sms_http_auth_header,
            timeout_seconds=settings.sms_http_timeout_seconds,
        )

    def _headers(self, notification: Notification) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": notification.notification_id}
        if self.token:
            is_bearer = self.auth_header.lower() == "authorization"
            headers[self.auth_header] = f"Bearer {self.token}" if is_bearer else self.token
        return headers

    async def send(self, notification: Notification, contact: Contact | None, chain: Chain | None) -> None:
        if contact is None or not contact.phone:
            raise Undeliverable("no phone number for this member")
        body = json.dumps(
            {
                "message_id": notification.notification_id,
                "to": contact.phone,
                "text": f"【{notification.title}】{notification.body}",
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        try:
            response = await self.client.post(
                self.url, content=body, headers=self._headers(notification), timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"SMS provider timed out after {self.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"SMS provider unreachable: {type(exc).__name__}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        if 400 <= status < 500 and status not in TRANSIENT_4XX:
            raise Undeliverable(f"SMS provider refused the message: HTTP {status}")
        raise DeliveryFailed(f"SMS provider answered HTTP {status}")


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


def sms_channel(settings: Settings, client: httpx.AsyncClient, sink: JsonlSink) -> DeliveryChannel:
    """The SMS provider ``MEMBERSHIP_SMS_PROVIDER`` names."""
    if settings.sms_provider == "http":
        return HttpSmsChannel.from_settings(settings, client)
    return SmsChannel(sink)


def default_channels(settings: Settings) -> dict[Channel, DeliveryChannel]:
    sink = JsonlSink(sink_dir(settings))
    client = httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_SECONDS, follow_redirects=False)
    webhook = WebhookChannel(client, sink, require_signature=settings.is_production)
    return {"webhook": webhook, "sms": sms_channel(settings, client, sink), "email": EmailChannel(settings, sink)}


#: what example configurations (deploy/k8s) put where the provider's credential belongs
PLACEHOLDER_TOKENS = frozenset({"change-me", "changeme", "secret", "token", "xxx"})


def production_problems(settings: Settings, role: str) -> list[str]:
    """What production mode refuses in notify's SMS configuration (the worker is what delivers; the
    API and the migrations send nothing, so they start whatever the SMS settings say)."""
    if role != "worker":
        return []
    if settings.sms_provider == "sink":
        return [
            "MEMBERSHIP_SMS_PROVIDER is sink, the local file sink of development: members' SMS would be "
            "written to a file, never sent; set MEMBERSHIP_SMS_PROVIDER=http with MEMBERSHIP_SMS_HTTP_URL "
            "and MEMBERSHIP_SMS_HTTP_TOKEN"
        ]
    problems = []
    if not (settings.sms_http_url or "").startswith("https://"):
        problems.append(
            "MEMBERSHIP_SMS_HTTP_URL is not https://: the credential and phone numbers would travel unencrypted"
        )
    token = settings.sms_http_token.get_secret_value() if settings.sms_http_token else ""
    if not token:
        problems.append("MEMBERSHIP_SMS_HTTP_TOKEN is not set: the SMS provider needs its credential")
    elif token.lower() in PLACEHOLDER_TOKENS:
        problems.append("MEMBERSHIP_SMS_HTTP_TOKEN is a placeholder; set the SMS provider's credential")
    return problems

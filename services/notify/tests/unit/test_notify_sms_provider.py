"""The SMS provider adapters: the HTTP provider against a real local HTTP server (what it sends, how each
answer is classified, no phone number in errors or logs), the choice of provider from the settings, and
production mode refusing notify's worker with the local sink as its SMS channel."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from devstack.processes import free_port
from notify.channels import (
    DeliveryFailed,
    HttpSmsChannel,
    JsonlSink,
    SmsChannel,
    Undeliverable,
    default_channels,
    production_problems,
)
from notify.domain import Consents, Contact, Notification
from notify.service import SERVICE
from shared.production import EXIT_REFUSED, ProductionRefused, enforce
from shared.settings import Settings
from tests.sms_provider import TOKEN, SmsProvider

ROOT = Path(__file__).resolve().parents[4]
PHONE = "+8613800001234"
N = Notification(
    notification_id="n-sms-1",
    member_id="m-1",
    chain_id="c-1",
    kind="tier_up",
    channel="sms",
    locale="zh-CN",
    title="恭喜升级为银卡会员",
    body="王，恭喜您升级为银卡会员！",
    data={},
    created_at=datetime(2025, 1, 1, tzinfo=UTC),
)
CONTACT = Contact(name="王", phone=PHONE, consents=Consents(sms=True))


@pytest.fixture
def provider() -> Iterator[SmsProvider]:
    p = SmsProvider()
    yield p
    p.close()


async def _send(provider: SmsProvider, *, timeout: float = 2.0, token: str | None = TOKEN) -> None:
    async with httpx.AsyncClient() as client:
        channel = HttpSmsChannel(client, url=provider.url, token=token, timeout_seconds=timeout)
        await channel.send(N, CONTACT, None)


async def test_a_message_is_posted_as_json_with_the_credential_and_the_notification_id_as_idempotency_key(
    provider: SmsProvider,
) -> None:
    await _send(provider)
    [request] = provider.requests
    assert request["path"] == "/v1/sms"
    assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["idempotency-key"] == "n-sms-1"
    assert request["headers"]["content-type"] == "application/json"
    assert request["json"] == {"message_id": "n-sms-1", "to": PHONE, "text": f"【{N.title}】{N.body}"}
    assert list(provider.sent) == ["n-sms-1"]


async def test_the_credential_may_travel_in_an_api_key_header() -> None:
    provider = SmsProvider(auth_header="X-Api-Key")
    try:
        settings = Settings(
            sms_provider="http", sms_http_url=provider.url, sms_http_token=TOKEN, sms_http_auth_header="X-Api-Key"
        )
        async with httpx.AsyncClient() as client:
            await HttpSmsChannel.from_settings(settings, client).send(N, CONTACT, None)
        [request] = provider.requests
        assert request["headers"]["x-api-key"] == TOKEN and "authorization" not in request["headers"]
        assert list(provider.sent) == ["n-sms-1"]
    finally:
        provider.close()


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409, 425, 429])
async def test_5xx_and_the_not_now_4xx_answers_are_transient(provider: SmsProvider, status: int) -> None:
    provider.default = status
    with pytest.raises(DeliveryFailed) as failed:
        await _send(provider)
    assert not isinstance(failed.value, Undeliverable)
    assert str(failed.value) == f"SMS provider answered HTTP {status}"


@pytest.mark.parametrize("status", [400, 403, 404, 413, 422])
async def test_other_4xx_answers_are_permanent(provider: SmsProvider, status: int) -> None:
    provider.default = status
    with pytest.raises(Undeliverable, match=f"HTTP {status}"):
        await _send(provider)
    assert len(provider.requests) == 1


async def test_a_wrong_credential_is_refused_by_the_provider_and_permanent(provider: SmsProvider) -> None:
    with pytest.raises(Undeliverable, match="HTTP 401"):
        await _send(provider, token="not-the-token")
    assert provider.sent == {}


async def test_a_provider_slower_than_the_timeout_is_transient(provider: SmsProvider) -> None:
    provider.answers = [(200, 1.5)]
    with pytest.raises(DeliveryFailed, match=r"timed out after 0.3s") as failed:
        await _send(provider, timeout=0.3)
    assert not isinstance(failed.value, Undeliverable)


async def test_an_unreachable_provider_is_transient() -> None:
    async with httpx.AsyncClient() as client:
        channel = HttpSmsChannel(client, url=f"http://127.0.0.1:{free_port()}/v1/sms", token=TOKEN)
        with pytest.raises(DeliveryFailed, match="unreachable: ConnectError") as failed:
            await channel.send(N, CONTACT, None)
    assert not isinstance(failed.value, Undeliverable)


async def test_no_phone_is_undeliverable_and_nothing_is_sent(provider: SmsProvider) -> None:
    async with httpx.AsyncClient() as client:
        channel = HttpSmsChannel(client, url=provider.url, token=TOKEN)
        with pytest.raises(Undeliverable, match="no phone number"):
            await channel.send(N, Contact(consents=Consents(sms=True)), None)
    assert provider.requests == []


async def test_the_phone_number_is_in_no_error_and_no_log_line(
    provider: SmsProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    errors = []
    for answer in (503, 400, (200, 1.0)):
        provider.answers = [answer]
        with pytest.raises(DeliveryFailed) as failed:
            await _send(provider, timeout=0.2)
        errors.append(str(failed.value))
    assert len(provider.requests) == 3 and all(r["json"]["to"] == PHONE for r in provider.requests)
    digits = PHONE.removeprefix("+86")
    assert not [e for e in errors if digits in e]
    assert caplog.records and not [r for r in caplog.records if digits in r.getMessage() or digits in str(r.__dict__)]


# ---- which provider, from the settings ----------------------------------------------------------


def test_the_sink_is_the_development_default_and_http_is_chosen_by_the_settings(tmp_path: Path) -> None:
    assert isinstance(default_channels(Settings(notify_sink_dir=tmp_path))["sms"], SmsChannel)
    chosen = default_channels(
        Settings(sms_provider="http", sms_http_url="https://sms.example/v1/send", sms_http_token=SecretStr("t0k"))
    )["sms"]
    assert isinstance(chosen, HttpSmsChannel)
    assert (chosen.url, chosen.token, chosen.auth_header) == ("https://sms.example/v1/send", "t0k", "Authorization")
    assert chosen.timeout == 4.0


def test_http_without_a_url_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="MEMBERSHIP_SMS_HTTP_URL"):
        Settings(sms_provider="http")
    with pytest.raises(ValidationError, match="http"):
        Settings(sms_provider="http", sms_http_url="ftp://sms.example")
    with pytest.raises(ValidationError):
        Settings(sms_http_timeout_seconds=30)  # longer than the delivery's per-attempt limit


async def test_the_sink_still_writes_the_phone_to_its_file_only(tmp_path: Path) -> None:
    await SmsChannel(JsonlSink(tmp_path)).send(N, CONTACT, None)
    assert json.loads((tmp_path / "sms.jsonl").read_text(encoding="utf-8"))["to"] == PHONE


# ---- production mode ----------------------------------------------------------------------------

HTTP_SMS = {"sms_provider": "http", "sms_http_url": "https://sms.example/v1/send", "sms_http_token": "t0k"}


def test_production_refuses_the_sink_for_notifys_worker_only() -> None:
    sink = Settings(env="production")
    [problem] = production_problems(sink, "worker")
    assert "MEMBERSHIP_SMS_PROVIDER is sink" in problem
    assert production_problems(sink, "api") == [] and production_problems(sink, "migrate") == []
    assert production_problems(Settings(env="production", **HTTP_SMS), "worker") == []  # type: ignore[arg-type]
    plain = Settings(env="production", **{**HTTP_SMS, "sms_http_url": "http://sms.example/v1/send"})  # type: ignore[arg-type]
    assert [p for p in production_problems(plain, "worker") if "not https://" in p]
    tokenless = Settings(env="production", **{**HTTP_SMS, "sms_http_token": None})  # type: ignore[arg-type]
    assert [p for p in production_problems(tokenless, "worker") if "MEMBERSHIP_SMS_HTTP_TOKEN" in p]
    placeholder = Settings(env="production", **{**HTTP_SMS, "sms_http_token": "CHANGE-ME"})  # type: ignore[arg-type]
    assert [p for p in production_problems(placeholder, "worker") if "placeholder" in p]
    assert SERVICE.production_problems is production_problems


def test_enforce_exits_78_naming_the_services_own_problem() -> None:
    with pytest.raises(ProductionRefused) as refused:
        enforce(Settings(env="production"), "notify worker", check_database=False, extra=["the sms problem"])
    assert refused.value.code == EXIT_REFUSED and "the sms problem" in refused.value.problems


#: a configuration production accepts in every other respect (nothing is contacted before the refusal)
PRODUCTION = {
    "MEMBERSHIP_ENV": "production",
    "MEMBERSHIP_SECRETS_KEY": base64.b64encode(b"k" * 32).decode(),
    "MEMBERSHIP_PII_MASTER_KEY": base64.b64encode(b"p" * 32).decode(),
    "MEMBERSHIP_DATABASE_URL": "postgresql://membership:Xq7-unique-pw-91@db.internal:5432/membership",
    "MEMBERSHIP_DATABASE_SSLMODE": "require",
    "MEMBERSHIP_KAFKA_BOOTSTRAP": "kafka.internal:9093",
    "MEMBERSHIP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "MEMBERSHIP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "MEMBERSHIP_KAFKA_SASL_USERNAME": "membership",
    "MEMBERSHIP_KAFKA_SASL_PASSWORD": "kafka-pw-8d1e",
}


def test_notifys_worker_process_refuses_to_start_with_the_local_sms_sink() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MEMBERSHIP_", "PG"))}
    done = subprocess.run(
        [sys.executable, "-m", "notify", "worker"],
        env={**clean, **PRODUCTION},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == EXIT_REFUSED, done.stderr
    assert "refusing to start in production mode" in done.stderr
    assert "MEMBERSHIP_SMS_PROVIDER is sink" in done.stderr
    # it is the only problem: the rest of the configuration passes
    assert done.stderr.count("  - ") == 1, done.stderr

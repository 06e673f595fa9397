"""The HTTP SMS provider through notify's delivery job, against the real PostgreSQL and a real local HTTP
server playing the provider: a 5xx is retried after the backoff and the message is delivered once; a 4xx
fails the notification at once (NotificationFailed) and is never tried again; an acknowledgement lost to
a timeout is retried with the same Idempotency-Key, so the provider sends the SMS once. No phone number
is in a notification's recorded error or in a log line.

Each test uses a database of its own in the suite's PostgreSQL (like tests/integration/test_migrations.py):
the delivery job claims every due row of its database, and the running notify worker (the local sink)
must not take these rows, nor these calls take its rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devstack.stack import Stack
from notify.channels import DeliveryChannel, HttpSmsChannel
from notify.delivery import deliver_due
from notify.service import SERVICE
from notify.tables import contacts, notifications
from shared.api import ServiceContext
from shared.migrate import upgrade
from shared.platform import upsert_chain
from shared.service import build_context
from tests.sms_provider import TOKEN, SmsProvider

pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "notify")]

CHAIN = "sms-chain"
PHONE = "+8613900004321"


@pytest.fixture
async def ctx(stack: Stack) -> AsyncIterator[ServiceContext]:
    base = stack.settings()
    name = f"notify_sms_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base.database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base.database_url).set(database=name).render_as_string(hide_password=False)
    # retries due 10 s after a failure: a run "now" must leave them alone, a run at their time take them
    settings = base.model_copy(update={"database_url": url, "notify_retry_base_seconds": 10.0})
    context = None
    try:
        await asyncio.to_thread(upgrade, settings, ["notify"])
        context = build_context(SERVICE, settings)
        await upsert_chain(context.db.engine, CHAIN, "SMS Clinics")
        yield context
    finally:
        if context is not None:
            await context.db.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture
def provider() -> Iterator[SmsProvider]:
    p = SmsProvider()
    yield p
    p.close()


async def queue_sms(ctx: ServiceContext) -> str:
    """A member with SMS consent and one tier_up SMS due now; returns the notification id."""
    member_id, notification_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with ctx.db.unit_of_work() as uow:
        now = uow.now()
        await uow.execute(
            insert(contacts).values(member_id=member_id, chain_id=CHAIN, name="王", phone=PHONE, consents={"sms": True})
        )
        await uow.execute(
            insert(notifications).values(
                notification_id=notification_id,
                member_id=member_id,
                chain_id=CHAIN,
                kind="tier_up",
                channel="sms",
                locale="zh-CN",
                title="恭喜升级为银卡会员",
                body="王，恭喜您升级为银卡会员！",
                data={"to_tier": "silver", "marketing": False},
                next_attempt_at=now - timedelta(seconds=1),
                source_event_id=str(uuid.uuid4()),
                created_at=now,
            )
        )
    return notification_id


async def row(ctx: ServiceContext, notification_id: str) -> Any:
    async with ctx.db.engine.connect() as conn:
        return (
            await conn.execute(select(notifications).where(notifications.c.notification_id == notification_id))
        ).one()


async def events(ctx: ServiceContext, notification_id: str) -> list[tuple[str, dict[str, Any]]]:
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT event_type, payload FROM notify.outbox ORDER BY id"))).all()
    out = [(r.event_type, json.loads(r.payload)["data"]) for r in rows]
    return [(t, d) for t, d in out if d.get("notification_id") == notification_id]


def channels(provider: SmsProvider, client: Any, timeout: float = 2.0) -> dict[Any, DeliveryChannel]:
    return {"sms": HttpSmsChannel(client, url=provider.url, token=TOKEN, timeout_seconds=timeout)}


async def deliver(ctx: ServiceContext, provider: SmsProvider, as_of: datetime, timeout: float = 2.0) -> int:
    import httpx

    async with httpx.AsyncClient() as client:
        return await deliver_due(ctx, channels(provider, client, timeout), as_of=as_of)


async def now(ctx: ServiceContext) -> datetime:
    async with ctx.db.unit_of_work() as uow:
        return uow.now()


async def test_a_provider_5xx_is_retried_after_the_backoff_and_the_sms_is_delivered_once(
    ctx: ServiceContext, provider: SmsProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    nid = await queue_sms(ctx)
    provider.answers = [503]

    assert await deliver(ctx, provider, await now(ctx)) == 1
    first = await row(ctx, nid)
    assert (first.status, first.attempts, first.last_error) == ("pending", 1, "SMS provider answered HTTP 503")
    assert provider.sent == {} and len(provider.requests_for(nid)) == 1
    assert await events(ctx, nid) == []

    # not due yet: the backoff is the delivery job's, the channel does not retry on its own
    assert await deliver(ctx, provider, await now(ctx)) == 0
    assert len(provider.requests_for(nid)) == 1

    assert await deliver(ctx, provider, first.next_attempt_at) == 1
    done = await row(ctx, nid)
    assert (done.status, done.attempts, done.last_error) == ("sent", 2, None) and done.sent_at is not None
    requests = provider.requests_for(nid)
    assert len(requests) == 2 and {r["json"]["to"] for r in requests} == {PHONE}
    assert list(provider.sent) == [nid]  # one SMS
    [(event_type, data)] = await events(ctx, nid)
    assert event_type == "NotificationSent" and data["attempts"] == 2 and data["channel"] == "sms"

    # nothing more to do for it, however late the next run
    assert await deliver(ctx, provider, first.next_attempt_at + timedelta(days=1)) == 0
    assert len(provider.requests_for(nid)) == 2
    assert not [r for r in caplog.records if PHONE[3:] in r.getMessage() or PHONE[3:] in str(r.__dict__)]


async def test_a_provider_4xx_fails_the_notification_at_once_and_it_is_not_retried(
    ctx: ServiceContext, provider: SmsProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    nid = await queue_sms(ctx)
    provider.default = 422

    assert await deliver(ctx, provider, await now(ctx)) == 1
    failed = await row(ctx, nid)
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.last_error == "SMS provider refused the message: HTTP 422"
    [(event_type, data)] = await events(ctx, nid)
    assert event_type == "NotificationFailed" and data["attempts"] == 1 and "422" in data["error"]
    assert PHONE not in json.dumps(data) and PHONE[3:] not in failed.last_error

    provider.default = 200  # even a provider that would take it now gets nothing more
    assert await deliver(ctx, provider, await now(ctx) + timedelta(days=1)) == 0
    assert len(provider.requests_for(nid)) == 1 and provider.sent == {}
    logged = [r for r in caplog.records if r.getMessage() == "notification failed"]
    assert logged and all(PHONE[3:] not in str(r.__dict__) for r in caplog.records)


async def test_an_acknowledgement_lost_to_a_timeout_is_retried_with_the_same_key_and_sent_once(
    ctx: ServiceContext, provider: SmsProvider
) -> None:
    nid = await queue_sms(ctx)
    provider.answers = [(200, 1.5)]  # the provider sends it, but answers after the sender gave up

    assert await deliver(ctx, provider, await now(ctx), timeout=0.3) == 1
    first = await row(ctx, nid)
    assert (first.status, first.attempts) == ("pending", 1) and "timed out" in first.last_error
    await asyncio.sleep(1.5)  # the provider's late answer is written and dropped
    assert list(provider.sent) == [nid]

    assert await deliver(ctx, provider, first.next_attempt_at, timeout=0.3) == 1
    assert (await row(ctx, nid)).status == "sent"
    keys = [r["headers"]["idempotency-key"] for r in provider.requests_for(nid)]
    assert keys == [nid, nid]
    assert list(provider.sent) == [nid]  # the provider honoured the key: one SMS, not two

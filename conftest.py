"""Session fixtures: the suite starts its own PostgreSQL, broker and services on free ports and
a temporary data folder, so it runs beside a ``make run``. Unit tests start nothing.

``MEMBERSHIP_TEST_SERVICES=enrollment,points`` limits which services' processes are started.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import free_port
from devstack.stack import Stack
from shared.settings import SERVICES
from tests.helpers import Api, WebhookReceiver


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def stack(webhook: WebhookReceiver) -> Iterator[Stack]:
    wanted = tuple(s for s in os.environ.get("MEMBERSHIP_TEST_SERVICES", ",".join(SERVICES)).split(",") if s)
    data_dir = Path(tempfile.mkdtemp(prefix="membership-test-"))
    stack = Stack(
        data_dir=data_dir,
        pg_port=free_port(),
        broker_port=free_port(),
        service_ports={s: free_port() for s in SERVICES},
        services=wanted,
        pg_conf={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
        env_overrides={
            "MEMBERSHIP_DEMO_WEBHOOK_URL": webhook.url,
            "MEMBERSHIP_NOTIFY_SINK_DIR": str(data_dir / "sink"),
            "MEMBERSHIP_SCHEDULE_INTERVAL_SECONDS": "1",
            "MEMBERSHIP_NOTIFY_RETRY_BASE_SECONDS": "0.2",
            "MEMBERSHIP_CONSUMER_RETRY_BACKOFF_SECONDS": "0.05",
            "MEMBERSHIP_CLOCK_FILE": str(data_dir / "clock-offset"),
            "MEMBERSHIP_API_KEY_CACHE_SECONDS": "0",
        },
    )
    try:
        stack.start_infrastructure()
        stack.start_services()
        stack.wait_ready(90)
        yield stack
    finally:
        stack.stop()
        if os.environ.get("MEMBERSHIP_KEEP_TEST_DATA") != "1":
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def api(stack: Stack) -> Api:
    return Api({s: stack.url(s) for s in SERVICES})


@pytest.fixture(scope="session")
def other_chain_key(stack: Stack) -> str:
    """A key (all scopes) of a second chain, to show chains are isolated."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.platform import add_api_key, upsert_chain

    async def go() -> str:
        engine = create_async_engine(stack.postgres.url)  # type: ignore[union-attr]
        try:
            await upsert_chain(engine, "other-chain", "Other Clinics")
            return await add_api_key(engine, "other-chain", ["pos", "app", "ops"], name="other-all")
        finally:
            await engine.dispose()

    return asyncio.run(go())

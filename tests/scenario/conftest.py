"""Scenario tests move the platform's clock, so they get a stack of their own: the session stack's
tests assume real time. Every process of this stack reads its time offset from one file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from devstack.processes import free_port
from devstack.stack import Stack
from shared.clock import OffsetFileClock
from shared.settings import SERVICES
from tests.backends import infrastructure
from tests.helpers import Api, WebhookReceiver


class ControlledClock:
    """The scenario's hand on the platform clock: only ever moves forward."""

    def __init__(self, path: Path) -> None:
        self.clock = OffsetFileClock(path)
        self.offset = 0.0

    def now(self) -> datetime:
        return self.clock.now()

    def advance(self, **delta: float) -> datetime:
        self.offset += timedelta(**delta).total_seconds()
        self.clock.set_offset(self.offset)
        return self.now()

    def advance_to(self, when: datetime) -> datetime:
        seconds = (when - self.now()).total_seconds()
        assert seconds >= 0, f"the clock only moves forward ({when} is in its past)"
        self.offset += seconds
        self.clock.set_offset(self.offset)
        return self.now()


@pytest.fixture(scope="module")
def scenario_webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def scenario_stack(scenario_webhook: WebhookReceiver) -> Iterator[Stack]:
    data_dir = Path(tempfile.mkdtemp(prefix="membership-scenario-"))
    stack = Stack(
        data_dir=data_dir,
        pg_port=free_port(),
        broker_port=free_port(),
        service_ports={s: free_port() for s in SERVICES},
        pg_conf={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
        infrastructure=infrastructure(),  # embedded, or containers (tests/backends.py)
        env_overrides={
            "MEMBERSHIP_DEMO_WEBHOOK_URL": scenario_webhook.url,
            "MEMBERSHIP_NOTIFY_SINK_DIR": str(data_dir / "sink"),
            "MEMBERSHIP_SCHEDULE_INTERVAL_SECONDS": "0.5",
            "MEMBERSHIP_NOTIFY_RETRY_BASE_SECONDS": "0.2",
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
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def clock(scenario_stack: Stack) -> ControlledClock:
    return ControlledClock(scenario_stack.data_dir / "clock-offset")


@pytest.fixture(scope="module")
def scenario_api(scenario_stack: Stack) -> Api:
    return Api({s: scenario_stack.url(s) for s in SERVICES})

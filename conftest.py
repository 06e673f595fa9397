"""Session fixtures: the suite starts its own PostgreSQL, broker and services on free ports and
a temporary data folder, so it runs beside a ``make run``. Unit tests start nothing.

A test module marked ``@pytest.mark.services(...)`` gets a stack of just those services (see
:class:`StackPool`); ``MEMBERSHIP_TEST_SERVICES=enrollment,points`` limits the unmarked ones.
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
from tests.backends import infrastructure
from tests.helpers import Api, WebhookReceiver


def pytest_sessionstart(session: pytest.Session) -> None:
    """``MEMBERSHIP_TEST_BACKEND=containers`` where containers cannot run: stop at once, saying why."""
    from tests.backends import BackendUnavailable

    try:
        infrastructure()
    except BackendUnavailable as exc:
        raise pytest.UsageError(str(exc)) from exc


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


class StackPool:
    """One running stack at a time, for the set of services the current test module needs.

    A module marked ``@pytest.mark.services("enrollment", "points")`` tests those services' consumers
    on their own; unmarked modules (the end-to-end tests) get all five. Modules of one set are
    contiguous in a run, so each set starts once.
    """

    def __init__(self, webhook: WebhookReceiver) -> None:
        self.webhook = webhook
        self.current: Stack | None = None

    def get(self, services: tuple[str, ...]) -> Stack:
        if self.current is not None and self.current.services == services:
            return self.current
        self.close()
        self.current = self._start(services)
        return self.current

    def _start(self, services: tuple[str, ...]) -> Stack:
        data_dir = Path(tempfile.mkdtemp(prefix="membership-test-"))
        stack = Stack(
            data_dir=data_dir,
            pg_port=free_port(),
            broker_port=free_port(),
            service_ports={s: free_port() for s in SERVICES},
            worker_ports={s: free_port() for s in SERVICES},
            services=services,
            infrastructure=infrastructure(),  # embedded, or containers (tests/backends.py)
            pg_conf={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
            env_overrides={
                "MEMBERSHIP_DEMO_WEBHOOK_URL": self.webhook.url,
                "MEMBERSHIP_NOTIFY_SINK_DIR": str(data_dir / "sink"),
                "MEMBERSHIP_SCHEDULE_INTERVAL_SECONDS": "1",
                "MEMBERSHIP_NOTIFY_RETRY_BASE_SECONDS": "0.2",
                "MEMBERSHIP_CONSUMER_RETRY_BACKOFF_SECONDS": "0.05",
                "MEMBERSHIP_CLOCK_FILE": str(data_dir / "clock-offset"),
                "MEMBERSHIP_API_KEY_CACHE_SECONDS": "0",
                # the service and end-to-end tests run jobs "as of" chosen instants years ahead instead of
                # moving the clock the other tests share; the default bounds (an hour ahead, a week back)
                # are attacked on a stack of their own, tests/scenario/test_tenant_jobs.py (decision 0030)
                "MEMBERSHIP_MAX_AS_OF_SKEW_SECONDS": str(100 * 366 * 86400),
                "MEMBERSHIP_MAX_AS_OF_PAST_SECONDS": str(100 * 366 * 86400),
            },
        )
        try:
            stack.start_infrastructure()
            stack.start_services()
            stack.wait_ready(90)
        except BaseException:
            self._stop(stack)
            raise
        return stack

    def close(self) -> None:
        if self.current is not None:
            self._stop(self.current)
            self.current = None

    @staticmethod
    def _stop(stack: Stack) -> None:
        stack.stop()
        if os.environ.get("MEMBERSHIP_KEEP_TEST_DATA") != "1":
            import shutil

            shutil.rmtree(stack.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stacks(webhook: WebhookReceiver) -> Iterator[StackPool]:
    pool = StackPool(webhook)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, stacks: StackPool) -> Stack:
    marker = request.node.get_closest_marker("services")
    if marker is not None:
        services = tuple(marker.args)
    else:
        services = tuple(s for s in os.environ.get("MEMBERSHIP_TEST_SERVICES", ",".join(SERVICES)).split(",") if s)
    return stacks.get(services)


@pytest.fixture(autouse=True)
def _no_process_died(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the pooled stack fails plainly when one of its processes died under it (instead of
    timing out on an effect that never comes), naming the process and showing the end of its log."""
    yield
    if "stack" in request.fixturenames:
        stack: Stack = request.getfixturevalue("stack")
        dead = stack.dead_processes()
        assert not dead, "\n\n".join(f"{name} {why}" for name, why in dead.items())


@pytest.fixture(scope="module")
def api(stack: Stack) -> Api:
    return Api({s: stack.url(s) for s in SERVICES})


@pytest.fixture(scope="module")
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

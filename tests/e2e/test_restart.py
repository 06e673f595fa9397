"""Nothing is lost across a restart of ``make run``: the broker keeps everything in memory, so an
event a consumer had not read when the platform stopped exists only in the outbox afterwards.
``Stack._replay_into_new_broker`` publishes it again into the new broker, and the inboxes make the
events a consumer had already applied no-ops.

This module builds (and restarts) its own stack on free ports and a temporary data folder rather
than using the shared ``stack`` fixture, which the rest of the suite keeps running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devstack.processes import free_port
from devstack.stack import Stack
from shared.settings import SERVICES
from tests.helpers import APP, Api, WebhookReceiver, eventually

pytestmark = pytest.mark.e2e

FIRST_FEN, SECOND_FEN = 100_000, 250_000  # 1,000 and 2,500 yuan
# double points in the first 30 days after enrolment: 2 points a yuan
FIRST_POINTS, SECOND_POINTS = FIRST_FEN // 100 * 2, SECOND_FEN // 100 * 2


@pytest.fixture
def launch() -> Iterator[Callable[[], Stack]]:
    """``launch()`` starts a whole platform (infrastructure, every service's API and worker) on one
    data folder and one set of ports; a second call after ``stack.stop()`` is a restart of
    ``make run``. Everything started is stopped, and the data folder removed, at teardown."""
    data_dir = Path(tempfile.mkdtemp(prefix="membership-restart-"))
    webhook = WebhookReceiver()
    ports = {"pg": free_port(), "broker": free_port(), **{s: free_port() for s in SERVICES}}
    started: list[Stack] = []

    def start() -> Stack:
        stack = Stack(
            data_dir=data_dir,
            pg_port=ports["pg"],
            broker_port=ports["broker"],
            service_ports={s: ports[s] for s in SERVICES},
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
        started.append(stack)
        stack.start_infrastructure()
        stack.start_services()
        stack.wait_ready(90)
        return stack

    try:
        yield start
    finally:
        try:
            for stack in reversed(started):
                stack.stop()
        finally:
            webhook.close()
            if os.environ.get("MEMBERSHIP_KEEP_TEST_DATA") != "1":
                shutil.rmtree(data_dir, ignore_errors=True)


def _query(stack: Stack, sql: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(stack.settings().asyncpg_dsn)
        try:
            return await conn.fetchrow(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def _purchase_recorded(stack: Stack, purchase_id: str) -> Any:
    """Enrollment's outbox row of the purchase's PurchaseRecorded (event_id, published_at)."""
    return _query(
        stack,
        "SELECT event_id, published_at FROM enrollment.outbox "
        "WHERE event_type = 'PurchaseRecorded' AND payload::jsonb #>> '{data,purchase_id}' = $1",
        purchase_id,
    )


def _balance(api: Api, mid: str) -> int:
    r = api.get("points", f"/v1/members/{mid}/points", key=APP)
    assert r.status_code == 200, r.text
    return r.json()["balance"]


def _purchase_entries(api: Api, mid: str) -> list[dict]:
    r = api.get("points", f"/v1/members/{mid}/points/ledger", key=APP, params={"limit": 200})
    assert r.status_code == 200, r.text
    return [e for e in r.json()["items"] if e["entry_type"] == "earn" and e["reason"].startswith("purchase")]


def _progress(api: Api, mid: str) -> tuple[int, int]:
    r = api.get("tiering", f"/v1/members/{mid}/tier", key=APP)
    assert r.status_code == 200, r.text
    progress = r.json()["progress"]
    return progress["spend_fen"], progress["points"]


def test_an_event_only_the_old_broker_held_is_applied_once_after_a_restart(launch: Callable[[], Stack]) -> None:
    stack = launch()
    api = Api({s: stack.url(s) for s in SERVICES})
    try:
        # the normal path works
        mid = api.enrol()["member_id"]
        first = api.purchase(mid, FIRST_FEN)["purchase_id"]

        def first_applied() -> bool:
            assert _balance(api, mid) == FIRST_POINTS
            assert _progress(api, mid) == (FIRST_FEN, FIRST_POINTS)
            return True

        eventually(first_applied, timeout=60)

        # points stops reading; the second purchase reaches the broker (and tiering) but not points
        stack.stop_process("points-worker")
        second = api.purchase(mid, SECOND_FEN)["purchase_id"]

        def published() -> Any:
            row = _purchase_recorded(stack, second)
            assert row is not None and row["published_at"] is not None, row
            return row

        second_event = eventually(published, timeout=60)["event_id"]
        first_event = _purchase_recorded(stack, first)["event_id"]
        # tiering applies it before the restart, so after it the replayed copy must be skipped
        eventually(lambda: _progress(api, mid) == (FIRST_FEN + SECOND_FEN, FIRST_POINTS), timeout=60)
        assert _balance(api, mid) == FIRST_POINTS
        assert _query(stack, "SELECT count(*) AS n FROM points.inbox WHERE event_id = $1", second_event)["n"] == 0
    finally:
        api.http.close()

    # stop everything, as Ctrl-C on ``make run`` does: the broker and what it held are gone
    stack.stop()
    stack = launch()
    api = Api({s: stack.url(s) for s in SERVICES})
    try:
        total_points = FIRST_POINTS + SECOND_POINTS

        def caught_up() -> bool:
            assert _balance(api, mid) == total_points
            assert _progress(api, mid) == (FIRST_FEN + SECOND_FEN, total_points)
            return True

        eventually(caught_up, timeout=90)
        # "exactly once" only means something when nothing is left in flight to apply a second time
        stack.wait_settled(90)
        assert _balance(api, mid) == total_points
        entries = _purchase_entries(api, mid)
        assert len(entries) == 2, entries
        assert sorted(e["source_event_id"] for e in entries) == sorted([first_event, second_event])
        assert sorted(e["delta"] for e in entries) == sorted([FIRST_POINTS, SECOND_POINTS])
        assert _progress(api, mid) == (FIRST_FEN + SECOND_FEN, total_points)
    finally:
        api.http.close()

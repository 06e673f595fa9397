"""Consumer throughput per worker: events already on the broker, one service's worker started
alone, the time until its inbox has applied them all.

    .venv/bin/python bench/consumers.py                  # points, tiering, benefits, enrollment
    .venv/bin/python bench/consumers.py --events 20000 --services points

For each service it puts N PurchaseRecorded events (for M members, after their MemberEnrolled)
straight on membership.enrollment — or N PointsChanged on membership.points for the enrollment
status view — starts only that service's worker, and prints events/s applied (one worker
process, batches of MEMBERSHIP_CONSUMER_BATCH, one transaction per batch): over the whole run
including the worker's start-up, and steady (between the starts of the first and the last batch
transaction, from the inbox's timestamps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.processes import free_port
from devstack.stack import Stack
from shared.events import (
    MemberEnrolled,
    PointsChanged,
    PurchaseItem,
    PurchaseRecorded,
    new_event,
)
from shared.settings import SERVICES

CHAIN = "demo-chain"


def make_events(service: str, n: int, m: int) -> list:
    now = datetime.now(UTC)
    members = [str(uuid.uuid4()) for _ in range(m)]
    events = [
        new_event(
            MemberEnrolled(
                member_id=mid,
                member_no=f"B{i:09d}",
                home_clinic_id="c",
                source="walk_in",
                birthday="1990-01-01",
                enrolled_at=now - timedelta(days=1),
            ),
            member_id=mid,
            chain_id=CHAIN,
        )
        for i, mid in enumerate(members)
    ]
    for i in range(n):
        mid = members[i % m]
        if service == "enrollment":
            data = PointsChanged(
                entry_id=str(uuid.uuid4()),
                delta=100,
                balance=100 * (i // m + 1),
                entry_type="earn",
                reason="purchase",
                occurred_at=now,
                qualifying=True,
                available=0,
                pending=100 * (i // m + 1),
            )
        else:
            pid = str(uuid.uuid4())
            data = PurchaseRecorded(
                purchase_id=pid,
                pos_txn_id=pid,
                clinic_id="c",
                member_id=mid,
                amount_fen=60_000,
                occurred_at=now,
                items=[PurchaseItem(sku="s", category="c", amount_fen=60_000, qty=1)],
            )
        events.append(new_event(data, member_id=mid, chain_id=CHAIN))
    return events


async def publish(bootstrap: str, events: list) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(e.topic, value=e.to_json(), key=e.subject.encode()) for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def applied(url: str, schema: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(text(f"SELECT count(*) FROM {schema}.inbox")))
    finally:
        await engine.dispose()


async def batch_rate(url: str, schema: str) -> float:
    """Events/s from the start of the first batch to the start of the last, from the inbox: a batch's
    rows share their transaction's start time (now()), so this is the events of every batch but the
    last over the time they took, with no start-up and no polling granularity in it."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        f"SELECT min(applied_at) AS first, max(applied_at) AS last, count(*) AS n, "
                        f"count(*) FILTER (WHERE applied_at = (SELECT max(applied_at) FROM {schema}.inbox)) AS in_last "
                        f"FROM {schema}.inbox"
                    )
                )
            ).one()
            seconds = (row.last - row.first).total_seconds()
            return (row.n - row.in_last) / seconds if seconds > 0 else float("nan")
    finally:
        await engine.dispose()


def measure(service: str, n: int, m: int) -> dict:
    data = Path(tempfile.mkdtemp(prefix="membership-bench-consumer-"))
    stack = Stack(
        data_dir=data,
        pg_port=free_port(),
        broker_port=free_port(),
        service_ports={s: free_port() for s in SERVICES},
        services=(),
    )
    stack.start_infrastructure()
    try:
        events = make_events(service, n, m)
        if service == "enrollment":
            events = [e for e in events if e.type != "MemberEnrolled"]  # the status view needs no member
        asyncio.run(publish(stack.broker.bootstrap, events))  # type: ignore[union-attr]
        started = time.perf_counter()
        stack.start_process(service, "worker")
        url = stack.postgres.url  # type: ignore[union-attr]
        done = 0
        first: tuple[float, int] | None = None  # (when, how many) at the first poll that saw progress
        while done < len(events):
            time.sleep(0.2)
            done = asyncio.run(applied(url, service))
            if first is None and done > 0:
                first = (time.perf_counter(), done)
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"{service}: {done}/{len(events)} after 600 s")
        finished = time.perf_counter()
        elapsed = finished - started  # includes the worker's start-up (imports, connections, group join)
        assert first is not None
        steady = asyncio.run(batch_rate(url, service))
        return {
            "service": service,
            "events": len(events),
            "seconds": round(elapsed, 2),
            "events_per_s": round(len(events) / elapsed, 1),
            "startup_s": round(first[0] - started, 2),
            "steady_events_per_s": round(steady, 1),
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", "-n", type=int, default=10_000)
    parser.add_argument("--members", "-m", type=int, default=200)
    parser.add_argument("--services", default="points,tiering,benefits,enrollment")
    args = parser.parse_args()
    results = [measure(s, args.events, args.members) for s in args.services.split(",")]
    print(json.dumps(results, indent=2))
    for r in results:
        print(
            f"{r['service']:<12}{r['events']:>8} events {r['seconds']:>8} s {r['events_per_s']:>10} events/s"
            f" (steady {r['steady_events_per_s']} events/s after {r['startup_s']} s of start-up)"
        )


if __name__ == "__main__":
    main()

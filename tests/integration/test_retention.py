"""Retention of the shared tables against the real PostgreSQL: old published outbox rows, old
inbox ids and old idempotency keys go; unpublished rows and recent ones stay."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text

from devstack.stack import Stack
from shared.db import Database
from shared.retention import purge
from shared.service import worker_schedules

pytestmark = pytest.mark.integration


async def test_retention_forgets_only_what_is_old_enough_and_never_an_unpublished_event(stack: Stack) -> None:
    from points.service import SERVICE
    from points.tables import shared

    db = Database.connect(stack.settings(), shared)
    tag = uuid.uuid4().hex
    try:
        async with db.engine.begin() as conn:
            for name, created, published in [
                ("old-published", timedelta(days=60), timedelta(days=8)),  # published 8 days ago: goes (7-day)
                ("recent-published", timedelta(days=2), timedelta(days=1)),  # stays
                ("old-unpublished", timedelta(days=60), None),  # never published: stays, whatever its age
            ]:
                await conn.execute(
                    text(
                        "INSERT INTO points.outbox (event_id, event_type, topic, key, shard, payload, created_at, "
                        "published_at) VALUES (:id, 'PointsChanged', 'membership.points', 'm', 0, '{}', "
                        "now() - CAST(:created AS interval), now() - CAST(:published AS interval))"
                    ),
                    {"id": f"{tag}-{name}", "created": created, "published": published},
                )
            for name, age in [("old", timedelta(days=31)), ("recent", timedelta(days=29))]:
                await conn.execute(
                    text(
                        "INSERT INTO points.inbox (event_id, applied_at) VALUES (:id, now() - CAST(:age AS interval))"
                    ),
                    {"id": f"{tag}-{name}", "age": age},
                )
            for name, age in [("old", timedelta(hours=49)), ("recent", timedelta(hours=47))]:
                await conn.execute(
                    text(
                        "INSERT INTO points.idempotency_keys (chain_id, scope, key, request_hash, created_at) "
                        "VALUES ('demo-chain', 'test', :id, 'h', now() - CAST(:age AS interval))"
                    ),
                    {"id": f"{tag}-{name}", "age": age},
                )

        purged = await purge(db, "points")

        async with db.engine.connect() as conn:
            outbox = set(
                (
                    await conn.execute(
                        text("SELECT event_id FROM points.outbox WHERE event_id LIKE :t"), {"t": f"{tag}-%"}
                    )
                ).scalars()
            )
            inbox = set(
                (
                    await conn.execute(
                        text("SELECT event_id FROM points.inbox WHERE event_id LIKE :t"), {"t": f"{tag}-%"}
                    )
                ).scalars()
            )
            keys = set(
                (
                    await conn.execute(
                        text("SELECT key FROM points.idempotency_keys WHERE key LIKE :t"), {"t": f"{tag}-%"}
                    )
                ).scalars()
            )
    finally:
        await db.dispose()
    assert outbox == {f"{tag}-recent-published", f"{tag}-old-unpublished"}
    assert inbox == {f"{tag}-recent"}
    assert keys == {f"{tag}-recent"}
    assert purged.outbox >= 1 and purged.inbox >= 1 and purged.idempotency_keys >= 1
    # and every worker runs it
    assert "retention" in [s.name for s in worker_schedules(SERVICE, stack.settings())]

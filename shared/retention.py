"""Retention of the shared tables: what the outbox, the inbox and the idempotency keys may forget.

Every worker runs :func:`purge` on a schedule for its own schema. Ages are measured on the
database's clock (the rows are stamped by it), in small batches so no delete holds locks
for long:

- **outbox** rows published more than ``outbox_retention_days`` ago (never unpublished ones);
- **inbox** ids applied more than ``inbox_retention_days`` ago. Keep this well beyond the
  topics' retention (Kafka's default is 7 days): a consumer group rewound to the oldest
  offset must still find every id it could be sent again;
- **idempotency keys** older than ``idempotency_key_hours``: after that a POST repeated with
  the same ``Idempotency-Key`` runs again (purchases stay idempotent on ``pos_txn_id``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Table, text

from .db import Database
from .observability import metrics

log = logging.getLogger(__name__)

BATCH = 5000


@dataclass(frozen=True)
class Purged:
    outbox: int
    inbox: int
    idempotency_keys: int


async def _purge_table(db: Database, table: str, where: str, age: timedelta, service: str) -> int:
    """Delete the rows matching ``where`` (with ``:age`` bound to ``age``), a batch at a time."""
    total = 0
    while True:
        async with db.engine.begin() as conn:
            deleted = (
                await conn.execute(
                    text(
                        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                        f"SELECT ctid FROM {table} WHERE {where} LIMIT {BATCH}))"
                    ),
                    {"age": age},
                )
            ).rowcount
        total += deleted
        if deleted < BATCH:
            break
    if total:
        metrics.inc("retention_deleted_total", total, service=service, table=table.rsplit(".", 1)[-1])
    return total


async def purge(db: Database, service: str) -> Purged:
    """One retention pass over the service's shared tables; returns how many rows each lost."""
    s, t = db.settings, db.tables

    async def older(table: Table, column: str, age: timedelta) -> int:
        return await _purge_table(
            db, f"{table.schema}.{table.name}", f"{column} < now() - CAST(:age AS interval)", age, service
        )

    purged = Purged(
        outbox=await older(t.outbox, "published_at", timedelta(days=s.outbox_retention_days)),
        inbox=await older(t.inbox, "applied_at", timedelta(days=s.inbox_retention_days)),
        idempotency_keys=await older(t.idempotency, "created_at", timedelta(hours=s.idempotency_key_hours)),
    )
    if purged.outbox or purged.inbox or purged.idempotency_keys:
        log.info(
            "retention purge",
            extra={"outbox": purged.outbox, "inbox": purged.inbox, "idempotency_keys": purged.idempotency_keys},
        )
    return purged

"""Pipeline health (SPEC §7): what ``membershipctl status`` shows of each service, from the numbers
the service itself can measure.

* ``GET /v1/ops/status`` on each API (ops keys): its outbox backlog and the age of its oldest
  unpublished row, the dead letters parked (the caller's chain, and all), the last event applied.
* ``/status`` on each worker's endpoint: its tasks alive, consumer lag per topic, the last error.
* The same numbers as Prometheus gauges (``outbox_backlog``, ``outbox_oldest_age_seconds``,
  ``dead_letters_parked``), refreshed by every worker on a short schedule.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import func, select

from .api import CtxDep, OpsKey
from .db import Database
from .observability import metrics

log = logging.getLogger(__name__)


class OutboxHealth(BaseModel):
    backlog: int
    oldest_age_seconds: float | None


class DeadLetterHealth(BaseModel):
    parked: int
    parked_all_chains: int


class ServiceHealth(BaseModel):
    service: str
    outbox: OutboxHealth
    dead_letters: DeadLetterHealth
    last_applied_at: datetime | None


async def measure(db: Database, service: str, chain_id: str | None = None) -> ServiceHealth:
    """One short read of the service's schema: the outbox's partial index and the dead letters' index."""
    t = db.tables
    now = db.clock.now()
    async with db.sessions() as session:
        backlog, oldest = (
            await session.execute(
                select(func.count(), func.min(t.outbox.c.created_at)).where(t.outbox.c.published_at.is_(None))
            )
        ).one()
        parked_all = await session.scalar(
            select(func.count()).select_from(t.dead_letters).where(t.dead_letters.c.status == "parked")
        )
        parked = parked_all
        if chain_id is not None:
            parked = await session.scalar(
                select(func.count())
                .select_from(t.dead_letters)
                .where(t.dead_letters.c.status == "parked", t.dead_letters.c.chain_id == chain_id)
            )
        last_applied = await session.scalar(select(func.max(t.inbox.c.applied_at)))
    return ServiceHealth(
        service=service,
        outbox=OutboxHealth(
            backlog=int(backlog), oldest_age_seconds=(now - oldest).total_seconds() if oldest is not None else None
        ),
        dead_letters=DeadLetterHealth(parked=int(parked or 0), parked_all_chains=int(parked_all or 0)),
        last_applied_at=last_applied,
    )


async def refresh_gauges(db: Database, service: str) -> ServiceHealth:
    health = await measure(db, service)
    metrics.set("outbox_backlog", health.outbox.backlog, service=service)
    metrics.set("outbox_oldest_age_seconds", health.outbox.oldest_age_seconds or 0.0, service=service)
    metrics.set("dead_letters_parked", health.dead_letters.parked_all_chains, service=service)
    return health


def health_router() -> APIRouter:
    router = APIRouter(prefix="/v1/ops", tags=["operations"])

    @router.get("/status", response_model=ServiceHealth)
    async def status(ctx: CtxDep, principal: OpsKey) -> ServiceHealth:
        """This service's outbox backlog, parked dead letters and last applied event."""
        return await measure(ctx.db, ctx.name, principal.chain_id)

    return router


class LastError(logging.Handler):
    """Keeps the process's last error (level ERROR and above) for the worker's /status."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.at: float | None = None
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.at = record.created
        self.message = f"{record.name}: {record.getMessage()}"[:500]

    def document(self) -> dict[str, Any] | None:
        if self.at is None:
            return None
        return {
            "at": datetime.fromtimestamp(self.at).astimezone().isoformat(),
            "message": self.message,
            "seconds_ago": round(time.time() - self.at, 1),
        }


LAST_ERROR = LastError()

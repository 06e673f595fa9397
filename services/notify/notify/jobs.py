"""Notify's scheduled jobs, each ``async def job(ctx, run: JobRun)``: delivering due notifications
(:class:`Deliveries`, every 0.2 s) and dropping parked events whose member never enrolled
(:func:`purge_parked_events`, hourly).

Both work on the service's whole queue, every chain's rows, not only ``run.chain_ids``: a row of a
chain the platform no longer lists (a deleted chain, a bad producer's chain id) must still be
delivered or given up, and purged; they take the run's ``as_of`` as the instant they judge by.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete

from shared.api import ServiceContext
from shared.db import Database
from shared.service import JobRun

from . import domain
from .channels import DeliveryChannel, default_channels
from .delivery import CLAIM_BATCH, MAX_ROUNDS_PER_RUN, deliver_due
from .tables import parked_events

log = logging.getLogger(__name__)

#: an enrolment that has not arrived this long after an event about the member never will
PARKED_DAYS = 30


class Deliveries:
    """The ``deliver-notifications`` job; keeps its channels (and their HTTP connection pool) between runs."""

    def __init__(self, channels: dict[domain.Channel, DeliveryChannel] | None = None) -> None:
        self.channels = channels

    async def __call__(self, ctx: ServiceContext, run: JobRun) -> int:
        """Deliver what is due as of ``run.as_of``; returns how many notifications were handled."""
        if self.channels is None:
            self.channels = default_channels(ctx.settings)
        handled = 0
        for _ in range(MAX_ROUNDS_PER_RUN):  # drain a backlog, but yield to the scheduler now and then
            claimed = await deliver_due(ctx, self.channels, as_of=run.as_of)
            handled += claimed
            if claimed < CLAIM_BATCH:
                break
        return handled


async def purge_parked_events(ctx: ServiceContext, run: JobRun) -> int:
    """The ``purge-parked-events`` job: see :func:`purge_parked`."""
    return await purge_parked(ctx.db, as_of=run.as_of)


async def purge_parked(
    db: Database, *, as_of: datetime | None = None, older_than: timedelta = timedelta(days=PARKED_DAYS)
) -> int:
    """Drop parked events whose member never enrolled (a bad producer, a member of a deleted chain):
    those parked ``older_than`` before ``as_of`` (default: now). Returns how many."""
    async with db.unit_of_work() as uow:
        cutoff = (as_of or uow.now()) - older_than
        result = await uow.execute(delete(parked_events).where(parked_events.c.parked_at < cutoff))
        dropped = int(result.rowcount)
    if dropped:
        log.warning("dropped parked events whose member never enrolled", extra={"events": dropped})
    return dropped

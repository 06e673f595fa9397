"""Tiering's scheduled jobs, each ``async def job(ctx, run: JobRun)``: the schedule runs them for every
chain as of now, and an operations endpoint may run one for the caller's chain as of the time asked.
The work itself is in :mod:`tiering.reviews` and :mod:`tiering.recalculation`."""

from __future__ import annotations

from shared.api import ServiceContext, current_correlation_id
from shared.service import JobRun

from . import recalculation, reviews


async def tier_reviews(ctx: ServiceContext, run: JobRun) -> reviews.ReviewTally:
    """Review every member of the run's chains due as of ``run.as_of`` (and end the overrides that
    ended by then). Run by ``POST /v1/reviews/run``, its events are correlated with the request."""
    return await reviews.run_due_reviews(
        ctx.db, as_of=run.as_of, chain_ids=run.chain_ids, correlation_id=current_correlation_id()
    )


async def policy_recalculations(ctx: ServiceContext, run: JobRun) -> int:
    """Work through the running recalculation jobs of the run's chains; returns the batches done.
    A recalculation applies its policy as of each batch's own transaction, not as of ``run.as_of``:
    it is started by ops and runs as soon as the worker picks it up."""
    return await recalculation.process_recalculations(ctx, chain_ids=run.chain_ids)

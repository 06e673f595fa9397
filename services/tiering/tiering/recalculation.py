"""Re-evaluating a whole chain under one policy version, as a background job.

``POST /v1/policy/recalculate`` only records a job (:func:`tiering.commands.start_recalculation`);
the worker's schedule (:func:`tiering.jobs.policy_recalculations`) processes it in
keyset batches of :data:`RECALC_BATCH` members (``member_id > cursor``), one transaction each,
with one aggregate query for the batch's trailing totals. The job row is claimed with
``FOR UPDATE SKIP LOCKED``, so one replica works on a job at a time, and each batch commits
together with the job's progress: a job survives a restart and never processes a member twice.

A recalculation applies the policy exactly as written: every member moves to the tier the
version qualifies them for, up or down, with no one-step limit (unlike a review), though never
below an override that still holds. Only members who move get a history row and a TierChanged
(reason "recalculation"); everyone's ``policy_version`` becomes the job's. A PUT of the
policy alone moves nobody.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update

from shared.api import ServiceContext
from shared.consumer import is_transient
from shared.db import UnitOfWork
from shared.platform import chain_timezone

from . import domain
from .moves import TierMove, record_moves
from .policies import policy_version
from .store import trailing_totals
from .tables import members, recalc_jobs

log = logging.getLogger(__name__)

RECALC_BATCH = 1000


async def _claim_job(uow: UnitOfWork, chain_ids: Sequence[str]) -> Any:
    return (
        await uow.execute(
            select(recalc_jobs)
            .where(recalc_jobs.c.status == "running", recalc_jobs.c.chain_id.in_(chain_ids))
            .order_by(recalc_jobs.c.started_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
    ).first()


async def recalculate_batch(uow: UnitOfWork, job: Any, *, limit: int = RECALC_BATCH) -> bool:
    """Re-evaluate the job's next batch of members; False when the job has just finished."""
    policy = await policy_version(uow, chain_id=job.chain_id, version=job.policy_version)
    now = uow.now()
    stmt = select(members).where(members.c.chain_id == job.chain_id)
    if job.cursor is not None:
        stmt = stmt.where(members.c.member_id > job.cursor)
    # FOR UPDATE (waiting, not skipping): every member must be evaluated; a handler holding a
    # member's row finishes first, and a deadlock with one is retried as a transient error
    rows = list((await uow.execute(stmt.order_by(members.c.member_id).limit(limit).with_for_update())).all())
    if not rows:
        await uow.execute(
            update(recalc_jobs).where(recalc_jobs.c.job_id == job.job_id).values(status="done", finished_at=now)
        )
        return False
    ids = [r.member_id for r in rows]
    totals = await trailing_totals(uow, member_ids=ids, window_days=policy.qualification_window_days, as_of=now)
    tz = await chain_timezone(uow.session, job.chain_id)
    moves: list[TierMove] = []
    for r in rows:
        spend, points = totals.get(r.member_id, (0, 0))
        floor = r.override_tier if domain.override_holds(r.override_tier, r.override_until, now) else None
        to_tier = domain.recalculated_tier(policy, domain.qualified_tier(policy, spend, points), floor)
        if to_tier != r.tier:
            moves.append(
                TierMove(r.member_id, r.tier, to_tier, "recalculation", domain.review_at(now, policy.review_months, tz))
            )
    await record_moves(uow, moves, policy=policy, chain_id=job.chain_id, effective_at=now, totals=totals)
    await uow.execute(update(members).where(members.c.member_id.in_(ids)).values(policy_version=policy.version))
    await uow.execute(
        update(recalc_jobs)
        .where(recalc_jobs.c.job_id == job.job_id)
        .values(cursor=ids[-1], processed=recalc_jobs.c.processed + len(ids), moved=recalc_jobs.c.moved + len(moves))
    )
    return True


async def _fail(ctx: ServiceContext, job_id: str, error: BaseException) -> None:
    async with ctx.db.unit_of_work() as uow:
        await uow.execute(
            update(recalc_jobs)
            .where(recalc_jobs.c.job_id == job_id)
            .values(status="failed", finished_at=uow.now(), error=repr(error)[:2000])
        )


async def process_recalculations(ctx: ServiceContext, *, chain_ids: Sequence[str]) -> int:
    """Work through every running job of the chains, one batch per transaction; returns the batches done.
    Each batch is evaluated as of its own transaction's now (its ``effective_at``)."""
    batches = 0
    if not chain_ids:
        return batches
    while True:
        job_id = None
        try:
            async with ctx.db.unit_of_work() as uow:
                job = await _claim_job(uow, chain_ids)
                if job is None:
                    return batches
                job_id = job.job_id
                more = await recalculate_batch(uow, job)
            batches += 1
            if not more:
                log.info("recalculation done", extra={"job_id": job_id})
        except Exception as exc:
            if job_id is None or is_transient(exc):
                raise  # the schedule logs it and tries again later, from the committed cursor
            log.exception("recalculation failed", extra={"job_id": job_id})
            await _fail(ctx, job_id, exc)

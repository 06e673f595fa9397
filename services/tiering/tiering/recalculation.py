"""Re-evaluating a whole chain under one policy version, as a background job.

``POST /v1/policy/recalculate`` only records a job; the worker's schedule processes it in
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
import uuid
from typing import Any

from sqlalchemy import func, select, update

from shared.api import ServiceContext
from shared.consumer import is_transient
from shared.db import UnitOfWork
from shared.problems import NotFound

from . import domain, schemas
from .handlers import TierMove, chain_timezone, record_moves, trailing_totals
from .policies import POLICIES, policy_version
from .tables import members, recalc_jobs

log = logging.getLogger(__name__)

RECALC_BATCH = 1000


def _view(row: Any) -> schemas.Recalculation:
    return schemas.Recalculation(
        job_id=row.job_id,
        status=row.status,
        policy_version=row.policy_version,
        total=row.total,
        processed=row.processed,
        moved=row.moved,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
    )


async def start_recalculation(uow: UnitOfWork, *, chain_id: str) -> schemas.RecalculationStarted:
    """Record a job for the chain's current policy version; the worker does the work.

    A job still running under an older version is superseded (marked failed): two jobs of
    different versions must not move the same members back and forth.
    """
    policy = await POLICIES.get(uow, chain_id)
    now = uow.now()
    job_id = str(uuid.uuid4())
    await uow.execute(
        update(recalc_jobs)
        .where(recalc_jobs.c.chain_id == chain_id, recalc_jobs.c.status == "running")
        .values(status="failed", finished_at=now, error=f"superseded by job {job_id} (policy version {policy.version})")
    )
    total = await uow.session.scalar(select(func.count()).select_from(members).where(members.c.chain_id == chain_id))
    await uow.execute(
        recalc_jobs.insert().values(
            job_id=job_id,
            chain_id=chain_id,
            policy_version=policy.version,
            status="running",
            total=total or 0,
            started_at=now,
        )
    )
    return schemas.RecalculationStarted(
        job_id=job_id, status="running", policy_version=policy.version, total=total or 0
    )


async def recalculation(uow: UnitOfWork, *, chain_id: str, job_id: str) -> schemas.Recalculation:
    row = (
        await uow.execute(select(recalc_jobs).where(recalc_jobs.c.job_id == job_id, recalc_jobs.c.chain_id == chain_id))
    ).first()
    if row is None:
        raise NotFound("No such recalculation.")
    return _view(row)


async def _claim_job(uow: UnitOfWork) -> Any:
    return (
        await uow.execute(
            select(recalc_jobs)
            .where(recalc_jobs.c.status == "running")
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
    tz = await chain_timezone(uow, job.chain_id)
    moves = []
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


async def process_recalculations(ctx: ServiceContext) -> int:
    """The worker's schedule: work through every running job, one batch per transaction."""
    batches = 0
    while True:
        job_id = None
        try:
            async with ctx.db.unit_of_work() as uow:
                job = await _claim_job(uow)
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

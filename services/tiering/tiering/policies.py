"""The tier policy as versioned data per chain, and the small cache the hot path reads it through.

A chain's first read stores :data:`shared.policy.DEFAULT_POLICY` as version 1; every
PUT adds version current+1 and publishes it as ``PolicyChanged`` in the same transaction,
so the services that keep copies (points, benefits, enrollment) apply it. Versions are never
changed in place, so a cached ``(chain, version)`` document is valid for ever: the cache only
has to notice a newer version, which it does with one primary-key lookup every few seconds.
A PUT moves nobody: members keep their tiers until a review or ``POST /v1/policy/recalculate``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from shared.db import UnitOfWork
from shared.events import PolicyChanged
from shared.policy import DEFAULT_POLICY, Policy
from shared.problems import Conflict, NotFound

from .tables import members, policies

CACHE_SECONDS = 2.0


def _policy(row: Any) -> Policy:
    return Policy.model_validate({**row.document, "version": row.version})


async def _latest_row(uow: UnitOfWork, chain_id: str) -> Any:
    return (
        await uow.execute(
            select(policies.c.version, policies.c.document)
            .where(policies.c.chain_id == chain_id)
            .order_by(policies.c.version.desc())
            .limit(1)
        )
    ).first()


async def current_policy(uow: UnitOfWork, *, chain_id: str) -> Policy:
    """The chain's newest policy, read from the database (storing the default on the first read)."""
    row = await _latest_row(uow, chain_id)
    if row is None:
        # concurrent first reads insert the same version 1; the loser's insert does nothing
        await uow.execute(
            pg_insert(policies)
            .values(
                chain_id=chain_id,
                version=1,
                document=DEFAULT_POLICY.model_copy(update={"version": 1}).model_dump(mode="json"),
            )
            .on_conflict_do_nothing()
        )
        row = await _latest_row(uow, chain_id)
    return _policy(row)


async def _latest_version(uow: UnitOfWork, chain_id: str) -> int | None:
    return await uow.session.scalar(select(func.max(policies.c.version)).where(policies.c.chain_id == chain_id))


class PolicyCache:
    """Per-process cache of each chain's newest policy, re-checked every ``ttl`` seconds."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Policy]] = {}

    async def get(self, uow: UnitOfWork, chain_id: str) -> Policy:
        hit = self._entries.get(chain_id)
        if hit is not None:
            checked, policy = hit
            if time.monotonic() - checked < self.ttl:
                return policy
            if await _latest_version(uow, chain_id) == policy.version:
                self._entries[chain_id] = (time.monotonic(), policy)
                return policy
        policy = await current_policy(uow, chain_id=chain_id)
        self.remember(chain_id, policy)
        return policy

    def remember(self, chain_id: str, policy: Policy) -> None:
        self._entries[chain_id] = (time.monotonic(), policy)


POLICIES = PolicyCache()


async def _tiers_held(uow: UnitOfWork, chain_id: str) -> set[str]:
    rows = await uow.execute(select(members.c.tier).where(members.c.chain_id == chain_id).distinct())
    return {r.tier for r in rows}


async def store_policy(uow: UnitOfWork, *, chain_id: str, policy: Policy) -> Policy:
    """Store ``policy`` as the chain's next version (the version it names is ignored)."""
    current = await current_policy(uow, chain_id=chain_id)
    orphaned = await _tiers_held(uow, chain_id) - {t.code for t in policy.tiers}
    if orphaned:
        raise Conflict(f"Members still hold tiers the new policy drops: {sorted(orphaned)}.", tiers=sorted(orphaned))
    stored = policy.model_copy(update={"version": current.version + 1})
    now = uow.now()
    document = stored.model_dump(mode="json")
    try:
        async with uow.session.begin_nested():
            await uow.execute(
                policies.insert().values(chain_id=chain_id, version=stored.version, document=document, created_at=now)
            )
    except IntegrityError as exc:
        # two PUTs raced for the same version number: the other one won
        raise Conflict("The policy was changed concurrently; read it again and retry.") from exc
    # same transaction as the new version: consumers get it exactly when it exists
    uow.publish(
        PolicyChanged(version=stored.version, policy=document, changed_at=now),
        member_id=f"chain:{chain_id}",
        chain_id=chain_id,
    )
    return stored


async def policy_version(uow: UnitOfWork, *, chain_id: str, version: int) -> Policy:
    """One stored version of the chain's policy (versions are immutable)."""
    await current_policy(uow, chain_id=chain_id)  # a chain that never read its policy has version 1 stored now
    row = (
        await uow.execute(
            select(policies.c.version, policies.c.document).where(
                policies.c.chain_id == chain_id, policies.c.version == version
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"No policy version {version}.")
    return _policy(row)


async def policy_in_force(uow: UnitOfWork, *, chain_id: str, as_of: datetime) -> Policy:
    """The version in force at ``as_of``: the newest one created by then. Before the first
    stored version, that first version (the chain ran it from the start)."""
    await current_policy(uow, chain_id=chain_id)
    versions = select(policies.c.version, policies.c.document).where(policies.c.chain_id == chain_id)
    row = (
        await uow.execute(versions.where(policies.c.created_at <= as_of).order_by(policies.c.version.desc()).limit(1))
    ).first()
    if row is None:
        row = (await uow.execute(versions.order_by(policies.c.version).limit(1))).one()
    return _policy(row)

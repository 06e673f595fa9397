"""The tier policy as versioned data per chain, and the small cache the hot path reads it through.

A chain's first read stores :data:`shared.policy.DEFAULT_POLICY` as version 1; every
PUT adds version current+1 (:func:`tiering.commands.change_policy`) and publishes it as
``PolicyChanged`` in the same transaction, so the services that keep copies (points,
benefits, enrollment) apply it. Versions are never changed in place, so a cached
``(chain, version)`` document is valid for ever: the cache only has to notice a newer
version, which it does with one primary-key lookup every few seconds.
A PUT moves nobody: members keep their tiers until a review or ``POST /v1/policy/recalculate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.cache import MISSING, TTLCache
from shared.db import UnitOfWork
from shared.policy import DEFAULT_POLICY, Policy
from shared.problems import NotFound

from .tables import policies

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
    version: int | None = await uow.session.scalar(
        select(func.max(policies.c.version)).where(policies.c.chain_id == chain_id)
    )
    return version


class PolicyCache:
    """Per-process cache of each chain's newest policy, re-checked every ``ttl`` seconds.

    Within ``ttl`` of the last check the policy is answered from memory; after that the cheap
    re-check asks only whether the newest version is still the one held (a primary-key lookup),
    and reads the document again only when a newer version exists."""

    def __init__(self, ttl: float = CACHE_SECONDS, *, clock: Callable[[], float] = time.monotonic) -> None:
        #: the chains whose policy was checked within ``ttl``
        self._checked: TTLCache[str, Policy] = TTLCache(ttl, clock=clock)
        #: the newest policy seen per chain, checked or not (versions never change in place)
        self._held: dict[str, Policy] = {}

    async def get(self, uow: UnitOfWork, chain_id: str) -> Policy:
        checked = self._checked.get(chain_id)
        if checked is not MISSING:
            return checked
        held = self._held.get(chain_id)
        if held is not None and await _latest_version(uow, chain_id) == held.version:
            return self._checked.put(chain_id, held)
        policy = await current_policy(uow, chain_id=chain_id)
        self.remember(chain_id, policy)
        return policy

    def remember(self, chain_id: str, policy: Policy) -> None:
        self._held[chain_id] = policy
        self._checked.put(chain_id, policy)


POLICIES = PolicyCache()


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

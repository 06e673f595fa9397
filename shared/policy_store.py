"""A service's copy of each chain's programme versions.

Tiering owns the policy (``PUT /v1/policy``) and publishes every new version as a
``PolicyChanged`` event; points and benefits keep the versions in a ``policies``
table of their own schema through :meth:`PolicyStore.on_policy_changed`, and read the
current one with :meth:`PolicyStore.current`. A chain that never changed its policy
runs :data:`shared.policy.DEFAULT_POLICY` (version 1).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, PrimaryKeyConstraint, Table, Text, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .cache import MISSING, TTLCache
from .db import UnitOfWork
from .events import CloudEvent, PolicyChanged
from .policy import DEFAULT_POLICY, Policy


def policy_table(metadata: MetaData) -> Table:
    return Table(
        "policies",
        metadata,
        Column("chain_id", Text, nullable=False),
        Column("version", Integer, nullable=False),
        Column("document", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("chain_id", "version"),
    )


def create_policy_table(op: Any, schema: str) -> None:
    """For a service's migration."""
    policy_table(MetaData(schema=schema)).create(op.get_bind())


class PolicyStore:
    def __init__(self, table: Table, cache_seconds: float = 2.0) -> None:
        self.table = table
        self.cache_seconds = cache_seconds
        self._current: TTLCache[str, Policy] = TTLCache(cache_seconds)

    async def current(self, session: AsyncSession | AsyncConnection, chain_id: str) -> Policy:
        hit = self._current.get(chain_id)
        if hit is not MISSING:
            return hit
        doc = await session.scalar(
            select(self.table.c.document)
            .where(self.table.c.chain_id == chain_id)
            .order_by(self.table.c.version.desc())
            .limit(1)
        )
        policy = Policy.model_validate(doc) if doc is not None else DEFAULT_POLICY
        return self._current.put(chain_id, policy)

    async def version(self, session: AsyncSession, chain_id: str, version: int) -> Policy | None:
        doc = await session.scalar(
            select(self.table.c.document).where(self.table.c.chain_id == chain_id, self.table.c.version == version)
        )
        if doc is None:
            return DEFAULT_POLICY if version == DEFAULT_POLICY.version else None
        return Policy.model_validate(doc)

    async def store(self, session: AsyncSession, chain_id: str, policy: Policy) -> None:
        await session.execute(
            pg_insert(self.table)
            .values(
                chain_id=chain_id,
                version=policy.version,
                document=policy.model_dump(mode="json"),
            )
            .on_conflict_do_nothing()
        )
        hit = self._current.get(chain_id)
        if hit is MISSING or hit.version <= policy.version:
            self._current.put(chain_id, policy)

    async def on_policy_changed(self, event: CloudEvent[PolicyChanged], uow: UnitOfWork) -> None:
        data = event.data
        policy = Policy.model_validate({**data.policy, "version": data.version})
        await self.store(uow.session, event.chainid, policy)

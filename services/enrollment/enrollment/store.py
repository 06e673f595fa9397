"""The tables enrollment's event handlers use: the member status view.

:class:`EnrollmentStore` says what the handlers need in the domain's words; :class:`SqlStore` is
the real one over ``enrollment.member_status`` (the unit of work's transaction); the unit tests
give an in-memory one. The API's reads of the view use the same store.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert

from shared.db import Unit, UnitOfWork

from .domain import Doc, SnapshotColumn, StatusDocument
from .tables import member_status, members


@dataclass(frozen=True)
class StoredStatus:
    """A member's row of the view and when it last changed."""

    document: StatusDocument
    updated_at: datetime


class EnrollmentStore(abc.ABC):
    @abc.abstractmethod
    async def write_snapshots(self, *, snapshots: Mapping[str, Mapping[SnapshotColumn, Doc]]) -> None:
        """Replace the given snapshot documents (points, tier, progress) of each member's view."""

    @abc.abstractmethod
    async def keep_benefit(self, *, member_id: str, benefit: Doc) -> None:
        """Add or replace the member's entry for ``benefit["benefit_id"]``."""

    @abc.abstractmethod
    async def drop_benefit(self, *, member_id: str, benefit_id: str) -> None:
        """Remove the member's entry for ``benefit_id`` (a member without a row gets an empty one)."""

    @abc.abstractmethod
    async def set_benefits(self, *, member_id: str, benefits: Mapping[str, Doc]) -> None:
        """Replace all the member's entries with ``benefits`` (by benefit id); a member without a row gets one."""

    @abc.abstractmethod
    async def status_of(self, *, member_id: str) -> StoredStatus | None:
        """The member's row of the view; None before any event about them."""

    @abc.abstractmethod
    async def chains_of(self, *, member_ids: Sequence[str]) -> dict[str, str]:
        """The chain of each of ``member_ids`` enrolled here (an event naming another chain is forged)."""


def stored_status(row: Any) -> StoredStatus:
    """A row of ``member_status`` (or a query's row with its columns) as the stored view."""
    document = StatusDocument(tier=row.tier, progress=row.progress, points=row.points, benefits=row.benefits or {})
    return StoredStatus(document=document, updated_at=row.updated_at)


def store_of(uow: Unit) -> EnrollmentStore:
    """The transaction's store: the SQL one, unless a test provided another."""
    return uow.state(_store_key(), SqlStore)


def _store_key() -> type[EnrollmentStore]:
    """The key of the store in a unit of work's state: the abstract class itself, which mypy refuses
    as a literal argument for ``type[T]`` (it cannot know ``state`` never instantiates it when given
    ``make``) but accepts from a function typed to return it."""
    return EnrollmentStore


class SqlStore(EnrollmentStore):
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    async def write_snapshots(self, *, snapshots: Mapping[str, Mapping[SnapshotColumn, Doc]]) -> None:
        # every member's newest documents in one upsert per set of columns
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for member_id, docs in snapshots.items():
            row: dict[str, Any] = {"member_id": member_id}
            for column, doc in docs.items():
                row[column] = doc
            by_columns.setdefault(tuple(sorted(docs)), []).append(row)
        for columns, rows in by_columns.items():
            stmt = pg_insert(member_status)
            await self.uow.execute(
                stmt.on_conflict_do_update(
                    index_elements=["member_id"],
                    set_={**{c: stmt.excluded[c] for c in columns}, "updated_at": func.now()},
                ),
                rows,
            )

    async def keep_benefit(self, *, member_id: str, benefit: Doc) -> None:
        entry = {benefit["benefit_id"]: benefit}
        await self._set_status(
            member_id,
            insert={"benefits": entry},
            benefits=member_status.c.benefits.op("||")(literal(entry, JSONB)),
        )

    async def drop_benefit(self, *, member_id: str, benefit_id: str) -> None:
        await self._set_status(
            member_id, insert={"benefits": {}}, benefits=member_status.c.benefits.op("-")(benefit_id)
        )

    async def set_benefits(self, *, member_id: str, benefits: Mapping[str, Doc]) -> None:
        entries = dict(benefits)
        await self._set_status(member_id, insert={"benefits": entries}, benefits=literal(entries, JSONB))

    async def status_of(self, *, member_id: str) -> StoredStatus | None:
        row = (await self.uow.execute(select(member_status).where(member_status.c.member_id == member_id))).first()
        return None if row is None else stored_status(row)

    async def chains_of(self, *, member_ids: Sequence[str]) -> dict[str, str]:
        rows = await self.uow.execute(
            select(members.c.member_id, members.c.chain_id).where(members.c.member_id.in_(list(member_ids)))
        )
        return {r.member_id: r.chain_id for r in rows}

    async def _set_status(self, member_id: str, *, insert: dict[str, Any] | None = None, **values: Any) -> None:
        """Upsert columns of the status row. ``values`` may be SQL expressions over the current row
        (for the update); ``insert`` gives what a first row gets instead where they differ."""
        row = {**values, **(insert or {})}
        stmt = pg_insert(member_status).values(member_id=member_id, updated_at=func.now(), **row)
        await self.uow.execute(
            stmt.on_conflict_do_update(index_elements=["member_id"], set_={**values, "updated_at": func.now()})
        )

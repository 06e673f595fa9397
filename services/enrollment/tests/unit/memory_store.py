"""An in-memory :class:`~enrollment.store.EnrollmentStore` for fast handler tests: one
:class:`~enrollment.domain.StatusDocument` per member, changed by :func:`enrollment.domain.apply`,
the rule the SQL store's upserts implement (an integration test checks that the two agree)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from enrollment import domain
from enrollment.domain import Doc, SnapshotColumn, StatusDocument
from enrollment.store import EnrollmentStore, StoredStatus
from shared.testing import FixedClock


@dataclass
class InMemoryStore(EnrollmentStore):
    #: the view's rows by member, and when each last changed (by ``now``, e.g. the unit of work's clock)
    rows: dict[str, StatusDocument] = field(default_factory=dict)
    updated_at: dict[str, datetime] = field(default_factory=dict)
    now: Callable[[], datetime] = field(default_factory=lambda: FixedClock().now)
    #: each call of write_snapshots, as given (the SQL store makes one upsert per set of columns of a call)
    snapshot_writes: list[dict[str, dict[SnapshotColumn, Doc]]] = field(default_factory=list)
    #: the chain of each enrolled member (``enrollment.members``); a member not here is unknown
    member_chains: dict[str, str] = field(default_factory=dict)
    #: each call of chains_of, as given
    chain_lookups: list[list[str]] = field(default_factory=list)

    def _change(self, member_id: str, change: domain.Change) -> None:
        self.rows[member_id] = domain.apply(self.rows.get(member_id), change)
        self.updated_at[member_id] = self.now()

    async def write_snapshots(self, *, snapshots: Mapping[str, Mapping[SnapshotColumn, Doc]]) -> None:
        self.snapshot_writes.append({m: dict(docs) for m, docs in snapshots.items()})
        for member_id, docs in snapshots.items():
            for column, doc in docs.items():
                self._change(member_id, domain.SetSnapshot(column, doc))

    async def keep_benefit(self, *, member_id: str, benefit: Doc) -> None:
        self._change(member_id, domain.KeepBenefit(benefit))

    async def drop_benefit(self, *, member_id: str, benefit_id: str) -> None:
        self._change(member_id, domain.DropBenefit(benefit_id))

    async def set_benefits(self, *, member_id: str, benefits: Mapping[str, Doc]) -> None:
        self._change(member_id, domain.SetBenefits(dict(benefits)))

    async def status_of(self, *, member_id: str) -> StoredStatus | None:
        document = self.rows.get(member_id)
        return StoredStatus(document=document, updated_at=self.updated_at[member_id]) if document is not None else None

    async def chains_of(self, *, member_ids: Sequence[str]) -> dict[str, str]:
        self.chain_lookups.append(list(member_ids))
        return {m: self.member_chains[m] for m in member_ids if m in self.member_chains}

"""An in-memory :class:`~benefits.store.BenefitsStore` for fast handler tests: dicts and lists that
keep the same promises as the tables (a replayed tier change is stale, a duplicate grant is skipped
under the same unique keys as ``benefits.entitlements``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, tzinfo

from benefits import domain
from benefits.store import BenefitsStore, Held
from shared.platform import DEFAULT_TIMEZONE
from shared.policy import DEFAULT_POLICY, Policy


@dataclass
class Member:
    member_id: str
    chain_id: str
    tier: str
    tier_since: datetime
    birthday: date | None = None


@dataclass
class Row:
    """One row of ``entitlements``: whose, and from which event."""

    member_id: str
    chain_id: str
    source_id: str
    entitlement: domain.Entitlement

    def held(self) -> Held:
        return Held(member_id=self.member_id, chain_id=self.chain_id, entitlement=self.entitlement)


@dataclass
class InMemoryStore(BenefitsStore):
    #: the chains' programmes (a chain not here runs the default one) and time zones (default: Shanghai)
    policies: dict[str, Policy] = field(default_factory=dict)
    zones: dict[str, tzinfo] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    changes: dict[str, list[domain.TierChange]] = field(default_factory=dict)
    purchases: dict[str, tuple[str, domain.LargePurchase]] = field(default_factory=dict)  # by id: (member, purchase)
    rows: list[Row] = field(default_factory=list)  # in the order granted

    # ---- what a test reads ----

    def of(self, member_id: str, code: str | None = None) -> list[domain.Entitlement]:
        """The member's entitlements (of one code), oldest first."""
        return [
            r.entitlement
            for r in self.rows
            if r.member_id == member_id and (code is None or r.entitlement.code == code)
        ]

    def active_codes(self, member_id: str) -> set[str]:
        return {e.code for e in self.of(member_id) if e.status == "active"}

    # ---- the store ----

    async def policy(self, *, chain_id: str) -> Policy:
        return self.policies.get(chain_id, DEFAULT_POLICY)

    async def timezone(self, *, chain_id: str) -> tzinfo:
        return self.zones.get(chain_id, DEFAULT_TIMEZONE)

    async def enrol(self, *, member_id: str, chain_id: str, tier: str, since: datetime, birthday: date) -> str | None:
        known = self.members.get(member_id)
        if known is not None and known.chain_id != chain_id:
            return None
        if known is None:
            known = self.members[member_id] = Member(member_id, chain_id, tier, since, birthday)
        else:
            known.birthday = birthday
        return known.tier

    async def move_to_tier(self, *, member_id: str, chain_id: str, tier: str, since: datetime) -> bool:
        known = self.members.get(member_id)
        if known is None:
            self.members[member_id] = Member(member_id, chain_id, tier, since)
            return True
        if known.tier_since > since or known.chain_id != chain_id:
            return False
        known.tier, known.tier_since = tier, since
        return True

    async def chains_of(self, *, member_ids: Sequence[str]) -> dict[str, str]:
        return {m: self.members[m].chain_id for m in member_ids if m in self.members}

    async def forget_birthday(self, *, member_id: str) -> None:
        known = self.members.get(member_id)
        if known is not None:
            known.birthday = None

    async def record_tier_change(self, *, member_id: str, change: domain.TierChange) -> None:
        kept = self.changes.setdefault(member_id, [])
        if all(c.effective_at != change.effective_at for c in kept):
            kept.append(change)

    async def tier_changes(self, *, member_id: str) -> list[domain.TierChange]:
        return sorted(self.changes.get(member_id, []), key=lambda c: c.effective_at)

    async def record_large_purchase(self, *, member_id: str, purchase: domain.LargePurchase) -> None:
        self.purchases.setdefault(purchase.purchase_id, (member_id, purchase))

    async def large_purchases(self, *, member_id: str) -> list[domain.LargePurchase]:
        return sorted(
            (p for m, p in self.purchases.values() if m == member_id), key=lambda p: (p.occurred_at, p.purchase_id)
        )

    async def entitlements(self, *, member_id: str) -> list[domain.Entitlement]:
        return self.of(member_id)

    async def end(
        self, *, targets: Sequence[domain.Entitlement], status: domain.Status, ends_at: datetime | None = None
    ) -> list[Held]:
        ids = {e.benefit_id for e in targets}
        ended: list[Held] = []
        for row in self.rows:
            e = row.entitlement
            if e.benefit_id not in ids or e.status != "active":
                continue
            until = e.valid_until
            if ends_at is not None:
                until = ends_at if until is None else min(until, ends_at)  # LEAST skips NULL
            row.entitlement = replace(e, status=status, valid_until=until)
            ended.append(row.held())
        return ended

    async def grant(self, *, chain_id: str, source_id: str, grants: Sequence[tuple[str, domain.Grant]]) -> list[Held]:
        stored: list[Held] = []
        for member_id, g in grants:
            row = Row(
                member_id=member_id,
                chain_id=chain_id,
                source_id=source_id,
                entitlement=domain.Entitlement(
                    benefit_id=str(uuid.uuid4()),
                    code=g.code,
                    kind=g.kind,
                    tier=g.tier,
                    status="active",
                    valid_from=g.valid_from,
                    valid_until=g.valid_until,
                    remaining_uses=g.remaining_uses,
                    value_fen=g.value_fen,
                    percent=g.percent,
                    period=g.period,
                ),
            )
            if not any(_conflict(row, other) for other in self.rows):
                self.rows.append(row)
                stored.append(row.held())
        return stored


def _one_active_per_code(e: domain.Entitlement) -> bool:
    """Whether the partial unique index ``entitlements_one_active_per_code`` covers the row."""
    return e.tier is not None and e.status == "active" and e.period is None


def _conflict(new: Row, old: Row) -> bool:
    """Whether ``new`` breaks one of the unique keys of ``entitlements`` next to ``old``."""
    a, b = new.entitlement, old.entitlement
    if new.member_id != old.member_id or a.code != b.code:
        return False
    return (
        new.source_id == old.source_id  # entitlements_grant_once
        or (a.period is not None and a.period == b.period)  # entitlements_once_per_period (NULLs distinct)
        or (_one_active_per_code(a) and _one_active_per_code(b))
    )

"""Tiering's store in memory, for fast handler tests: members, facts and history rows in plain lists
and dicts, with the same answers as :class:`tiering.store.SqlStore` (locks are recorded, not taken).

Its trailing-window sums are checked against the SQL ones, on the same random histories, by
``tests/integration/test_tiering_rule_agreement.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from shared.policy import DEFAULT_POLICY, Policy
from tiering import domain
from tiering.store import ERASED_NOTE, Fact, Member, TieringStore, Totals


@dataclass(frozen=True)
class HistoryRow:
    """A row of ``tier_history``."""

    member_id: str
    from_tier: str | None
    to_tier: str
    direction: str
    reason: str
    effective_at: datetime
    policy_version: int
    review_at: datetime | None


class InMemoryStore(TieringStore):
    def __init__(
        self,
        *,
        policy: Policy = DEFAULT_POLICY,
        timezone: ZoneInfo | None = None,
        members: Sequence[Member] = (),
        facts: Sequence[Fact] = (),
    ) -> None:
        self.policies: dict[str, Policy] = {}  # by chain; others run ``policy``
        self.default_policy = policy
        self.zone = timezone or ZoneInfo("Asia/Shanghai")
        self.members: dict[str, Member] = {m.member_id: m for m in members}
        self.facts: list[Fact] = list(facts)
        self.history: list[HistoryRow] = []
        self.locked: list[str] = []  # the member ids locked, in order

    # ---- what a test reads ----

    def member(self, member_id: str) -> Member:
        return self.members[member_id]

    def facts_of(self, member_id: str) -> list[Fact]:
        return [f for f in self.facts if f.member_id == member_id]

    # ---- TieringStore ----

    async def policy(self, *, chain_id: str) -> Policy:
        return self.policies.get(chain_id, self.default_policy)

    async def timezone(self, *, chain_id: str) -> ZoneInfo:
        return self.zone

    async def lock_members(self, *, member_ids: Sequence[str]) -> list[Member]:
        found = [self.members[m] for m in sorted(member_ids) if m in self.members]
        self.locked += [m.member_id for m in found]
        return found

    async def lock_or_create_member(
        self, *, member_id: str, chain_id: str, policy: Policy, now: datetime, enrolled_at: datetime | None = None
    ) -> Member | None:
        lowest = domain.lowest_tier(policy).code
        held = self.members.get(member_id)
        if held is not None and held.chain_id != chain_id:
            return None  # known in another chain: nothing changes
        if held is None:
            member = Member(
                member_id=member_id,
                chain_id=chain_id,
                tier=lowest,
                since=enrolled_at or now,
                review_at=None,
                policy_version=policy.version,
                enrolled_at=enrolled_at,
                updated_at=now,
            )
        else:
            changes: dict[str, Any] = {"updated_at": now}
            if enrolled_at is not None:
                changes["enrolled_at"] = enrolled_at
                if held.tier == lowest and held.enrolled_at is None:
                    changes["since"] = enrolled_at
            member = replace(held, **changes)
        self.members[member_id] = member
        self.locked.append(member_id)
        return member

    async def stored_facts(self, *, event_ids: Sequence[str]) -> set[str]:
        return {f.source_event_id for f in self.facts} & set(event_ids)

    async def add_new_fact(self, *, fact: Fact) -> None:
        if any(f.source_event_id == fact.source_event_id for f in self.facts):
            raise ValueError(f"duplicate key source_event_id={fact.source_event_id}")  # the unique index
        self.facts.append(fact)

    async def add_fact_once(self, *, fact: Fact) -> bool:
        if any(f.source_event_id == fact.source_event_id for f in self.facts):
            return False
        self.facts.append(fact)
        return True

    async def trailing_totals(
        self, *, member_ids: Sequence[str], window_days: int, as_of: datetime
    ) -> dict[str, Totals]:
        start, end = as_of - timedelta(days=window_days), as_of + domain.MAX_CLOCK_SKEW
        sums: dict[str, tuple[int, int]] = {}
        for f in self.facts:
            if f.member_id in member_ids and start < f.occurred_at <= end:
                spend, points = sums.get(f.member_id, (0, 0))
                sums[f.member_id] = (spend + f.spend_fen, points + f.points)
        return {m: (max(0, spend), max(0, points)) for m, (spend, points) in sums.items()}

    async def upgrade(
        self, *, member: Member, to_tier: str, policy_version: int, effective_at: datetime, review_at: datetime
    ) -> Member:
        changed = replace(
            self.members[member.member_id],
            tier=to_tier,
            since=effective_at,
            review_at=review_at,
            policy_version=policy_version,
            updated_at=effective_at,
        )
        self.members[member.member_id] = changed
        self.history.append(
            HistoryRow(
                member_id=member.member_id,
                from_tier=member.tier,
                to_tier=to_tier,
                direction="up",
                reason="qualified",
                effective_at=effective_at,
                policy_version=policy_version,
                review_at=review_at,
            )
        )
        return changed

    async def forget_notes(self, *, member_id: str) -> None:
        known = self.members.get(member_id)
        if known is not None and known.override_reason is not None:
            self.members[member_id] = replace(known, override_reason=ERASED_NOTE)  # (history rows have no notes here)

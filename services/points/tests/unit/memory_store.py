"""An in-memory :class:`PointsStore` for fast handler tests: the tables as dicts and lists.

It keeps what the real tables would hold after the unit of work: lots as copies (a wallet
changing a lot in hand changes nothing here until ``update_lots``), ledger entries in order,
balances, earnings, refunds and the behaviour months.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from points import domain
from points.store import Account, Entry, Member, PointsStore, PurchaseEarning, Refund
from shared.events import CloudEvent, PolicyChanged
from shared.platform import DEFAULT_TIMEZONE
from shared.policy import DEFAULT_POLICY, Policy


@dataclass
class StoredLot:
    member_id: str
    entry_id: str
    lot: domain.Lot


@dataclass
class InMemoryStore(PointsStore):
    tz: ZoneInfo = DEFAULT_TIMEZONE  # every member's chain's
    members: dict[str, Member] = field(default_factory=dict)
    lots: dict[str, StoredLot] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    policies: dict[str, Policy] = field(default_factory=dict)
    earnings: dict[str, PurchaseEarning] = field(default_factory=dict)
    refunds: dict[tuple[str, str], Refund] = field(default_factory=dict)
    behaviour: dict[tuple[str, date], int] = field(default_factory=dict)
    #: members locked so far, in locking order (what the real store would lock FOR UPDATE)
    locked: list[str] = field(default_factory=list)

    # ---- what a test looks at

    def balance(self, member_id: str) -> int:
        return self.members[member_id].balance

    def lots_of(self, member_id: str) -> list[domain.Lot]:
        return [s.lot for s in self.lots.values() if s.member_id == member_id]

    def entries_of(self, member_id: str) -> list[Entry]:
        return [e for e in self.entries if e.member_id == member_id]

    # ---- PointsStore

    async def add_member(self, *, member_id: str, chain_id: str, enrolled_at: datetime) -> str:
        return self.members.setdefault(member_id, Member(member_id, chain_id, enrolled_at, 0)).chain_id

    def _account(self, member: Member) -> Account:
        held = sorted(
            (dataclasses.replace(s.lot) for s in self.lots.values() if s.member_id == member.member_id),
            key=lambda lot: (lot.earned_at, lot.lot_id),
        )
        return Account(member, domain.Wallet(member.balance, [lot for lot in held if lot.remaining > 0], self.tz))

    async def locked_account(self, *, member_id: str) -> Account | None:
        member = self.members.get(member_id)
        if member is None:
            return None
        self.locked.append(member_id)
        return self._account(member)

    async def locked_accounts(self, *, member_ids: Sequence[str]) -> list[Account]:
        known = sorted(m for m in member_ids if m in self.members)
        self.locked += known
        return [self._account(self.members[m]) for m in known]

    async def policy(self, *, chain_id: str) -> Policy:
        return self.policies.get(chain_id, DEFAULT_POLICY)

    async def keep_policy(self, *, change: CloudEvent[PolicyChanged]) -> None:
        policy = Policy.model_validate({**change.data.policy, "version": change.data.version})
        current = self.policies.get(change.chainid)
        if current is None or current.version <= policy.version:
            self.policies[change.chainid] = policy

    async def earned_purchases(self, *, purchase_ids: Sequence[str]) -> set[str]:
        return {p for p in purchase_ids if p in self.earnings}

    async def add_purchase_earning(self, *, earning: PurchaseEarning) -> None:
        assert earning.purchase_id not in self.earnings, "a duplicate key the real table would reject"
        self.earnings[earning.purchase_id] = earning

    async def add_purchase_earning_if_new(self, *, earning: PurchaseEarning) -> bool:
        if earning.purchase_id in self.earnings:
            return False
        self.earnings[earning.purchase_id] = earning
        return True

    async def purchase_earning(self, *, purchase_id: str) -> PurchaseEarning | None:
        return self.earnings.get(purchase_id)

    async def add_refund(self, *, refund: Refund) -> bool:
        key = (refund.purchase_id, refund.refund_id)
        if key in self.refunds:
            return False
        self.refunds[key] = refund
        purchase = self.earnings.get(refund.purchase_id)
        if purchase is not None:
            self.earnings[refund.purchase_id] = dataclasses.replace(
                purchase,
                refunded_fen=purchase.refunded_fen + refund.amount_fen,
                reversed=purchase.reversed + refund.reversed,
            )
        return True

    async def behaviour_awarded(self, *, member_id: str, month: date) -> int:
        return self.behaviour.get((member_id, month), 0)

    async def add_behaviour_award(self, *, member_id: str, month: date, points: int) -> None:
        self.behaviour[(member_id, month)] = self.behaviour.get((member_id, month), 0) + points

    async def add_lots(self, *, member_id: str, entry_id: str, created: Sequence[domain.Lot]) -> None:
        for lot in created:
            assert lot.lot_id not in self.lots, "a duplicate key the real table would reject"
            assert 0 <= lot.remaining <= lot.points, "the real table's check constraint"
            self.lots[lot.lot_id] = StoredLot(member_id, entry_id, dataclasses.replace(lot))

    async def update_lots(self, *, changed: Sequence[domain.Lot]) -> None:
        for lot in changed:
            assert 0 <= lot.remaining <= lot.points, "the real table's check constraint"
            self.lots[lot.lot_id].lot.remaining = lot.remaining

    async def add_entry(self, *, entry: Entry) -> None:
        self.entries.append(entry)

    async def set_balance(self, *, member_id: str, balance: int, at: datetime) -> None:
        self.members[member_id] = dataclasses.replace(self.members[member_id], balance=balance)

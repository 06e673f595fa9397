"""Points' event handlers on an in-memory store: what each event earns, reverses or records, the
events published and the rows kept. (The SQL store behind them is tested by the integration tests.)"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from points import commands, domain, schemas
from points.handlers import (
    PointsBatch,
    UnknownMember,
    UnknownPurchase,
    on_activity_recorded,
    on_member_enrolled,
    on_policy_changed,
    on_purchase_recorded,
    on_purchase_refunded,
    on_referral_completed,
    prepare,
)
from points.store import Member, PointsStore
from points.wallets import held_points
from services.points.tests.unit.memory_store import InMemoryStore
from shared.events import (
    ActivityRecorded,
    MemberEnrolled,
    PendingPoints,
    PointsChanged,
    PolicyChanged,
    PurchaseItem,
    PurchaseRecorded,
    PurchaseRefunded,
    ReferralCompleted,
)
from shared.policy import DEFAULT_POLICY
from shared.problems import Conflict
from shared.testing import FakeUnitOfWork, FixedClock, event, handle

CHAIN = "chain-1"
SHANGHAI = ZoneInfo("Asia/Shanghai")  # the in-memory store's chains' time zone
NOW = FixedClock().now()  # 2025-06-01 12:00 UTC, the clock of every unit of work here


def unit_over(store: InMemoryStore, now: datetime = NOW) -> FakeUnitOfWork:
    """A new transaction (a new consumer batch) over the same tables."""
    uow = FakeUnitOfWork(clock=FixedClock(now))
    uow.provide(PointsStore, store)
    return uow


def enrolled(member_id: str, at: datetime, chain_id: str = CHAIN) -> MemberEnrolled:
    return MemberEnrolled(
        member_id=member_id,
        member_no="M1",
        home_clinic_id="clinic-1",
        source="walk_in",
        birthday=date(1990, 1, 1),
        enrolled_at=at,
    )


def purchase(member_id: str, amount_fen: int, at: datetime, purchase_id: str = "p-1") -> PurchaseRecorded:
    return PurchaseRecorded(
        purchase_id=purchase_id,
        pos_txn_id=f"T-{purchase_id}",
        clinic_id="clinic-1",
        member_id=member_id,
        amount_fen=amount_fen,
        occurred_at=at,
        items=[PurchaseItem(sku="peel", category="skin_care", amount_fen=amount_fen, qty=1)],
    )


def refund(member_id: str, amount_fen: int, purchase_id: str = "p-1", refund_id: str = "r-1") -> PurchaseRefunded:
    return PurchaseRefunded(
        purchase_id=purchase_id, refund_id=refund_id, amount_fen=amount_fen, occurred_at=NOW, member_id=member_id
    )


def activity(member_id: str, kind: str, at: datetime = NOW, activity_id: str = "a-1") -> ActivityRecorded:
    return ActivityRecorded(
        activity_id=activity_id, kind=kind, clinic_id="clinic-1", occurred_at=at, member_id=member_id
    )


async def store_with(*members: tuple[str, datetime]) -> InMemoryStore:
    """A store that knows these (member, enrolled at) of CHAIN."""
    store = InMemoryStore()
    for member_id, at in members:
        await handle(on_member_enrolled, event(enrolled(member_id, at)), unit_over(store))
    return store


LONG_AGO = NOW - timedelta(days=400)  # enrolled well before the new-member window


async def test_an_enrolment_makes_the_member_known_with_a_zero_balance_and_a_repeat_changes_nothing() -> None:
    store = InMemoryStore()
    at = NOW - timedelta(days=1)
    await handle(on_member_enrolled, event(enrolled("m-1", at)), unit_over(store))
    again = await handle(on_member_enrolled, event(enrolled("m-1", NOW)), unit_over(store))
    assert store.members == {"m-1": Member("m-1", CHAIN, at, 0)}
    assert again.events == []


async def test_a_purchase_in_the_first_30_days_earns_double_points_as_a_lot_pending_for_the_return_window() -> None:
    store = await store_with(("m-1", NOW - timedelta(days=12)))
    bought_at = NOW - timedelta(hours=1)
    uow = await handle(on_purchase_recorded, event(purchase("m-1", 12_345, bought_at)), unit_over(store))
    [changed] = uow.published(PointsChanged)
    expires_on = domain.expires_on(bought_at, SHANGHAI, 24)
    assert (changed.delta, changed.balance, changed.entry_type, changed.reason) == (
        246,
        246,
        "earn",
        "purchase (new member)",
    )
    assert (changed.available, changed.pending, changed.qualifying) == (0, 246, True)
    assert changed.pending_until == [PendingPoints(points=246, available_at=bought_at + timedelta(days=7))]
    assert [(g.points, g.expires_on) for g in changed.expiring or []] == [(246, expires_on)]
    [lot] = store.lots_of("m-1")
    assert (lot.points, lot.remaining, lot.purchase_id, lot.expires_on) == (246, 246, "p-1", expires_on)
    [entry] = store.entries_of("m-1")
    assert (entry.entry_id, entry.delta, entry.balance) == (changed.entry_id, 246, 246)
    assert store.lots[lot.lot_id].entry_id == entry.entry_id
    assert store.balance("m-1") == 246
    assert (store.earnings["p-1"].earned, store.earnings["p-1"].lot_id) == (246, lot.lot_id)


async def test_a_purchase_after_the_new_member_window_earns_one_point_per_whole_yuan() -> None:
    store = await store_with(("m-1", LONG_AGO))
    uow = await handle(on_purchase_recorded, event(purchase("m-1", 10_099, NOW)), unit_over(store))
    [changed] = uow.published(PointsChanged)
    assert (changed.delta, changed.reason) == (100, "purchase")


async def test_a_second_delivery_of_a_purchase_under_another_event_id_earns_nothing() -> None:
    store = await store_with(("m-1", LONG_AGO))
    await handle(on_purchase_recorded, event(purchase("m-1", 10_000, NOW)), unit_over(store))
    again = await handle(on_purchase_recorded, event(purchase("m-1", 10_000, NOW)), unit_over(store))
    assert again.published(PointsChanged) == []
    assert [e.delta for e in store.entries_of("m-1")] == [100]
    assert store.balance("m-1") == 100


async def test_a_purchase_delivered_twice_in_one_batch_earns_once_and_the_batch_knew_it_was_new() -> None:
    store = await store_with(("m-1", LONG_AGO))
    uow = unit_over(store)
    events = [event(purchase("m-1", 10_000, NOW)), event(purchase("m-1", 10_000, NOW))]
    await prepare(events, uow)
    assert uow.state(PointsBatch).purchase_earned == {"p-1": False}
    for e in events:
        await handle(on_purchase_recorded, e, uow)
    assert [c.delta for c in uow.published(PointsChanged)] == [100]
    assert uow.state(PointsBatch).purchase_earned == {"p-1": True}
    assert list(store.earnings) == ["p-1"]


async def test_prepare_locks_the_batch_members_once_in_member_order_and_their_events_share_one_wallet() -> None:
    store = await store_with(("m-b", LONG_AGO), ("m-a", LONG_AGO))
    uow = unit_over(store)
    events = [
        event(purchase("m-b", 10_000, NOW, purchase_id="p-1")),
        event(purchase("m-a", 20_000, NOW, purchase_id="p-2")),
        event(purchase("m-a", 30_000, NOW, purchase_id="p-3")),
        event(enrolled("m-c", NOW)),  # changes nobody's points: not locked
    ]
    await prepare(events, uow)
    assert store.locked == ["m-a", "m-b"]
    for e in events[:3]:
        await handle(on_purchase_recorded, e, uow)
    assert store.locked == ["m-a", "m-b"]  # the handlers took the batch's accounts, locking nothing again
    assert [(c.delta, c.balance) for c in uow.published(PointsChanged)] == [(100, 100), (200, 200), (300, 500)]
    assert (store.balance("m-a"), store.balance("m-b")) == (500, 100)


async def test_a_member_enrolled_in_the_same_batch_as_their_first_purchase_is_loaded_on_first_use() -> None:
    store = InMemoryStore()
    uow = unit_over(store)
    events = [event(enrolled("m-1", NOW - timedelta(days=1))), event(purchase("m-1", 10_000, NOW))]
    await prepare(events, uow)
    assert uow.state(PointsBatch).accounts == {}
    await handle(on_member_enrolled, events[0], uow)
    await handle(on_purchase_recorded, events[1], uow)
    assert [c.delta for c in uow.published(PointsChanged)] == [200]


async def test_a_purchase_for_a_member_never_enrolled_is_a_bad_event() -> None:
    store = InMemoryStore()
    with pytest.raises(UnknownMember):
        await handle(on_purchase_recorded, event(purchase("m-x", 10_000, NOW)), unit_over(store))
    assert store.entries == [] and store.earnings == {}


async def test_a_purchase_naming_another_chains_member_is_a_bad_event_alone_or_in_a_batch() -> None:
    store = await store_with(("m-1", LONG_AGO))
    foreign = event(purchase("m-1", 10_000, NOW), chain_id="other-chain")
    with pytest.raises(UnknownMember):
        await handle(on_purchase_recorded, foreign, unit_over(store))
    batch = unit_over(store)
    await prepare([foreign], batch)  # the batch locks the member whatever the chain: the handler judges
    with pytest.raises(UnknownMember):
        await handle(on_purchase_recorded, foreign, batch)
    assert store.entries == [] and store.balance("m-1") == 0


async def test_an_enrolment_naming_another_chains_member_is_a_bad_event_and_changes_nothing() -> None:
    store = await store_with(("m-1", LONG_AGO))
    before = store.members["m-1"]
    forged = event(enrolled("m-1", NOW), chain_id="other-chain")
    with pytest.raises(UnknownMember) as refused:
        await handle(on_member_enrolled, forged, unit_over(store))
    assert store.members["m-1"] == before and "chain-1" not in str(refused.value)


async def test_a_purchase_keyed_in_after_its_points_would_have_expired_earns_only_a_zero_entry_saying_why() -> None:
    store = await store_with(("m-1", LONG_AGO))
    bought_at = datetime(2023, 4, 15, 4, tzinfo=UTC)  # its points expired on 2025-04-30
    uow = await handle(on_purchase_recorded, event(purchase("m-1", 10_000, bought_at)), unit_over(store))
    assert uow.published(PointsChanged) == []
    [entry] = store.entries_of("m-1")
    assert (entry.delta, entry.balance, entry.entry_type) == (0, 0, "earn")
    assert entry.reason == "purchase: 100 points not awarded, they expired on 2025-04-30 before it arrived"
    assert store.lots_of("m-1") == []
    assert (store.earnings["p-1"].earned, store.earnings["p-1"].lot_id) == (0, None)


async def test_an_activity_earns_its_behaviour_points_and_counts_them_in_the_local_month() -> None:
    store = await store_with(("m-1", LONG_AGO))
    at = datetime(2025, 5, 31, 16, 30, tzinfo=UTC)  # already June 1st in Shanghai
    uow = await handle(on_activity_recorded, event(activity("m-1", "lecture", at)), unit_over(store))
    [changed] = uow.published(PointsChanged)
    assert (changed.delta, changed.reason, changed.qualifying) == (200, "activity:lecture", True)
    assert store.behaviour == {("m-1", date(2025, 6, 1)): 200}
    assert [lot.remaining for lot in store.lots_of("m-1")] == [200]


async def test_behaviour_points_over_the_monthly_cap_are_recorded_as_capped_not_awarded() -> None:
    store = await store_with(("m-1", LONG_AGO))
    store.behaviour[("m-1", date(2025, 6, 1))] = 1_900
    first = await handle(on_activity_recorded, event(activity("m-1", "lecture")), unit_over(store))
    second = await handle(on_activity_recorded, event(activity("m-1", "lecture", activity_id="a-2")), unit_over(store))
    assert [c.delta for c in first.published(PointsChanged)] == [100]
    assert second.published(PointsChanged) == []  # a zero entry publishes nothing
    assert [(e.delta, e.capped) for e in store.entries_of("m-1")] == [(100, 100), (0, 200)]
    assert store.behaviour[("m-1", date(2025, 6, 1))] == 2_000


async def test_an_activity_the_programme_does_not_reward_changes_nothing() -> None:
    store = await store_with(("m-1", LONG_AGO))
    uow = await handle(on_activity_recorded, event(activity("m-1", "karaoke")), unit_over(store))
    assert uow.events == [] and store.entries == [] and store.behaviour == {}


async def test_a_completed_referral_credits_the_referrer_with_the_programmes_points() -> None:
    store = await store_with(("m-referrer", LONG_AGO), ("m-referee", NOW))
    completed = ReferralCompleted(
        referrer_id="m-referrer", referee_id="m-referee", purchase_id="p-9", completed_at=NOW, referral_count=1
    )
    uow = await handle(on_referral_completed, event(completed, member_id="m-referrer"), unit_over(store))
    [changed] = uow.published(PointsChanged)
    assert (changed.delta, changed.reason, changed.pending) == (
        DEFAULT_POLICY.referral.referrer_points,
        "referral",
        500,
    )
    assert uow.events[0].subject == "m-referrer"
    assert (store.balance("m-referrer"), store.balance("m-referee")) == (500, 0)


async def test_a_refund_reverses_the_purchase_points_in_proportion_from_its_own_lot_and_only_once() -> None:
    store = await store_with(("m-1", NOW - timedelta(days=1)))
    uow = unit_over(store)
    await handle(on_purchase_recorded, event(purchase("m-1", 10_000, NOW)), uow)  # 200 (new member)
    refunded = event(refund("m-1", 2_550))
    await handle(on_purchase_refunded, refunded, uow)  # the same batch: the lot it takes was made in it
    again = await handle(on_purchase_refunded, event(refund("m-1", 2_550)), unit_over(store))
    reverse = uow.published(PointsChanged)[-1]
    assert (reverse.delta, reverse.balance, reverse.entry_type, reverse.qualifying) == (-51, 149, "reverse", True)
    assert reverse.source_event_id == refunded.id
    assert again.events == []
    assert [lot.remaining for lot in store.lots_of("m-1")] == [149]
    assert (store.earnings["p-1"].refunded_fen, store.earnings["p-1"].reversed) == (2_550, 51)
    assert store.balance("m-1") == 149


async def test_a_refund_after_the_points_were_redeemed_leaves_a_debt_that_blocks_redemption() -> None:
    store = await store_with(("m-1", LONG_AGO))
    await handle(on_purchase_recorded, event(purchase("m-1", 10_000, NOW - timedelta(days=10))), unit_over(store))
    await commands.redeem(
        unit_over(store), chain_id=CHAIN, member_id="m-1", req=schemas.RedemptionRequest(points=100, reason="gift")
    )
    uow = await handle(on_purchase_refunded, event(refund("m-1", 10_000)), unit_over(store))
    [changed] = uow.published(PointsChanged)
    assert (changed.delta, changed.balance, changed.available) == (-100, -100, -100)
    assert store.balance("m-1") == -100 and [lot.remaining for lot in store.lots_of("m-1")] == [0]
    with pytest.raises(Conflict, match="balance is negative"):
        await commands.redeem(
            unit_over(store), chain_id=CHAIN, member_id="m-1", req=schemas.RedemptionRequest(points=1, reason="x")
        )


async def test_a_refund_of_a_purchase_never_seen_or_of_another_members_purchase_is_a_bad_event() -> None:
    store = await store_with(("m-1", LONG_AGO), ("m-2", LONG_AGO))
    await handle(on_purchase_recorded, event(purchase("m-2", 10_000, NOW)), unit_over(store))
    with pytest.raises(UnknownPurchase):
        await handle(on_purchase_refunded, event(refund("m-1", 100, purchase_id="p-unknown")), unit_over(store))
    with pytest.raises(UnknownPurchase):
        await handle(on_purchase_refunded, event(refund("m-1", 100, purchase_id="p-1")), unit_over(store))
    assert store.refunds == {} and store.balance("m-2") == 100


async def test_a_policy_change_applies_to_the_next_purchase_and_never_rewrites_recorded_points() -> None:
    store = await store_with(("m-1", LONG_AGO))
    await handle(on_purchase_recorded, event(purchase("m-1", 10_000, NOW, purchase_id="p-1")), unit_over(store))
    document = DEFAULT_POLICY.model_dump(mode="json")
    document["earning"].update(points_per_yuan=3)
    change = PolicyChanged(version=2, policy=document, changed_at=NOW)
    await handle(on_policy_changed, event(change, member_id=f"chain:{CHAIN}"), unit_over(store))
    uow = await handle(on_purchase_recorded, event(purchase("m-1", 10_000, NOW, purchase_id="p-2")), unit_over(store))
    assert store.policies[CHAIN].version == 2
    assert [c.delta for c in uow.published(PointsChanged)] == [300]
    assert [e.delta for e in store.entries_of("m-1")] == [100, 300]


# ---- a rebuild's snapshot of the points ----------------------------------------------------------


async def test_a_snapshot_carries_the_points_a_points_change_carries_and_moves_them_on_with_time() -> None:
    store = await store_with(("m-1", NOW - timedelta(days=12)))
    bought_at = NOW - timedelta(hours=1)
    uow = await handle(on_purchase_recorded, event(purchase("m-1", 12_345, bought_at)), unit_over(store))
    uow = await handle(on_activity_recorded, event(activity("m-1", "lecture")), uow)
    changed = uow.published(PointsChanged)[-1]
    account = await store.locked_account(member_id="m-1")
    assert account is not None
    snapshot = held_points(account.wallet, NOW)
    assert snapshot.model_dump() == changed.model_dump(
        include={"balance", "available", "pending", "expiring", "pending_until"}
    )
    # once the return window has passed, the pending points are available, with no event about it
    later = held_points(account.wallet, NOW + timedelta(days=8))
    assert (later.balance, later.available, later.pending, later.pending_until) == (
        snapshot.balance,
        snapshot.balance,
        0,
        [],
    )

"""Tiering's event handlers on the in-memory store: what each fact does to a member's tier, progress
and qualification record, with no database (the SQL store is exercised by the integration tests).

A single event goes through ``handle`` (one unit of work, as the consumer's one-by-one retry
applies it); a batch goes through :func:`apply_batch`, as the consumer applies one: ``prepare``
first, then each handler, then the end of the unit of work (where members are qualified).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.tiering.tests.unit.memory_store import InMemoryStore
from shared.consumer import MemberOfAnotherChain, enter_event
from shared.events import (
    CloudEvent,
    MemberEnrolled,
    MemberErased,
    PointsChanged,
    PurchaseItem,
    PurchaseRecorded,
    PurchaseRefunded,
    TierChanged,
    TierProgressChanged,
)
from shared.policy import DEFAULT_POLICY
from shared.testing import FakeUnitOfWork, FixedClock, event, handle
from tiering import domain
from tiering.handlers import (
    HANDLERS,
    on_member_enrolled,
    on_member_erased,
    on_points_changed,
    on_purchase_recorded,
    on_purchase_refunded,
    prepare,
)
from tiering.moves import tier_snapshot
from tiering.store import Fact, Member, store_key

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CHAIN = "chain-1"
SILVER, GOLD, DIAMOND = 5_000_000, 15_000_000, 30_000_000
SHANGHAI = ZoneInfo("Asia/Shanghai")


def fresh(*members: Member, facts: tuple[Fact, ...] = (), store: InMemoryStore | None = None) -> FakeUnitOfWork:
    """A unit of work at NOW over ``store`` (a new one holding ``members`` and ``facts`` by default)."""
    uow = FakeUnitOfWork(clock=FixedClock(NOW))
    uow.provide(store_key(), store or InMemoryStore(members=members, facts=facts))
    return uow


def store_of(uow: FakeUnitOfWork) -> InMemoryStore:
    store = uow.state(store_key())  # provided by fresh()
    assert isinstance(store, InMemoryStore)
    return store


def known(member_id: str = "m-1", tier: str = "member", **kw: Any) -> Member:
    """A member tiering has seen enrol 100 days ago."""
    enrolled = NOW - timedelta(days=100)
    return Member(
        member_id=member_id,
        chain_id=CHAIN,
        tier=tier,
        since=kw.pop("since", enrolled),
        review_at=kw.pop("review_at", None),
        policy_version=1,
        enrolled_at=kw.pop("enrolled_at", enrolled),
        updated_at=enrolled,
        **kw,
    )


def enrolment(member_id: str, enrolled_at: datetime) -> CloudEvent[MemberEnrolled]:
    return event(
        MemberEnrolled(
            member_id=member_id,
            member_no="M000000001",
            home_clinic_id="sh-01",
            source="walk_in",
            birthday=datetime(1990, 2, 3).date(),
            enrolled_at=enrolled_at,
        ),
        chain_id=CHAIN,
    )


def purchase(member_id: str, amount_fen: int, occurred_at: datetime = NOW) -> CloudEvent[PurchaseRecorded]:
    return event(
        PurchaseRecorded(
            purchase_id=f"p-{amount_fen}-{occurred_at.isoformat()}",
            pos_txn_id="txn-1",
            clinic_id="sh-01",
            member_id=member_id,
            amount_fen=amount_fen,
            occurred_at=occurred_at,
            items=[PurchaseItem(sku="thermage", category="skin_care", amount_fen=amount_fen, qty=1)],
        ),
        chain_id=CHAIN,
    )


def refund(member_id: str, amount_fen: int, occurred_at: datetime = NOW) -> CloudEvent[PurchaseRefunded]:
    return event(
        PurchaseRefunded(
            purchase_id="p-1", refund_id="r-1", amount_fen=amount_fen, occurred_at=occurred_at, member_id=member_id
        ),
        chain_id=CHAIN,
    )


def points(
    member_id: str, delta: int, *, qualifying: bool = True, occurred_at: datetime | None = NOW
) -> CloudEvent[PointsChanged]:
    return event(
        PointsChanged(
            entry_id="e-1",
            delta=delta,
            balance=max(0, delta),
            entry_type="earn",
            reason="purchase",
            occurred_at=occurred_at,
            qualifying=qualifying,
        ),
        member_id=member_id,
        chain_id=CHAIN,
    )


async def apply_batch(events: list[CloudEvent[Any]], uow: FakeUnitOfWork) -> FakeUnitOfWork:
    """Apply a consumer batch as the runner does: prepare, every handler, then the end of the unit of work."""
    await prepare(events, uow)
    for e in events:
        enter_event(uow, e)
        await HANDLERS[type(e.data)](e, uow)
    await uow.commit()
    return uow


def only_progress(uow: FakeUnitOfWork) -> TierProgressChanged:
    [progress] = uow.published(TierProgressChanged)
    return progress


# ---- MemberEnrolled -----------------------------------------------------------------------------


async def test_an_enrolment_records_the_member_at_the_lowest_tier_since_enrolling_and_publishes_their_progress() -> (
    None
):
    enrolled_at = NOW - timedelta(minutes=3)
    uow = await handle(on_member_enrolled, enrolment("m-1", enrolled_at), fresh())

    member = store_of(uow).member("m-1")
    assert (member.tier, member.since, member.enrolled_at, member.review_at, member.chain_id) == (
        "member",
        enrolled_at,
        enrolled_at,
        None,
        CHAIN,
    )
    assert uow.published(TierChanged) == []
    p = only_progress(uow)
    assert (p.tier, p.tier_name, p.next_tier, p.spend_needed_fen, p.points_needed) == (
        "member",
        "普通会员",
        "silver",
        SILVER,
        50_000,
    )
    assert uow.events[0].subject == "m-1" and uow.events[0].chainid == CHAIN


async def test_an_enrolment_arriving_after_a_fact_completes_the_record_the_fact_created() -> None:
    store = InMemoryStore()
    await handle(on_purchase_recorded, purchase("m-1", 1_000_000), fresh(store=store))
    assert (store.member("m-1").since, store.member("m-1").enrolled_at) == (NOW, None)

    enrolled_at = NOW - timedelta(hours=1)
    uow = await handle(on_member_enrolled, enrolment("m-1", enrolled_at), fresh(store=store))

    assert (store.member("m-1").since, store.member("m-1").enrolled_at) == (enrolled_at, enrolled_at)
    assert only_progress(uow).spend_fen == 1_000_000  # the fact still counts


async def test_an_enrolment_arriving_after_an_upgrade_keeps_the_upgrades_since() -> None:
    store = InMemoryStore()
    await handle(on_purchase_recorded, purchase("m-1", SILVER), fresh(store=store))
    assert store.member("m-1").tier == "silver"

    await handle(on_member_enrolled, enrolment("m-1", NOW - timedelta(hours=1)), fresh(store=store))

    assert (store.member("m-1").tier, store.member("m-1").since) == ("silver", NOW)
    assert store.member("m-1").enrolled_at == NOW - timedelta(hours=1)


# ---- PurchaseRecorded ---------------------------------------------------------------------------


async def test_a_purchase_reaching_gold_upgrades_a_known_member_at_once_with_a_review_a_year_later() -> None:
    bought = purchase("m-1", GOLD)
    uow = await handle(on_purchase_recorded, bought, fresh(known("m-1")))

    store = store_of(uow)
    review = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    [changed] = uow.published(TierChanged)
    assert changed == TierChanged(
        from_tier="member",
        to_tier="gold",
        direction="up",
        reason="qualified",
        policy_version=1,
        effective_at=NOW,
        review_at=review,
        to_tier_name="金卡会员",
    )
    assert (store.member("m-1").tier, store.member("m-1").since, store.member("m-1").review_at) == ("gold", NOW, review)
    [row] = store.history
    assert (row.from_tier, row.to_tier, row.direction, row.reason, row.effective_at) == (
        "member",
        "gold",
        "up",
        "qualified",
        NOW,
    )
    assert store.facts_of("m-1") == [Fact(bought.id, "m-1", NOW, spend_fen=GOLD)]
    progress = only_progress(uow)
    assert (progress.tier, progress.next_tier, progress.spend_fen, progress.review_at) == (
        "gold",
        "diamond",
        GOLD,
        review,
    )


async def test_a_purchase_below_the_next_threshold_moves_only_the_progress() -> None:
    uow = await handle(on_purchase_recorded, purchase("m-1", SILVER - 1), fresh(known("m-1")))

    assert uow.published(TierChanged) == []
    assert store_of(uow).member("m-1").tier == "member"
    assert store_of(uow).history == []
    progress = only_progress(uow)
    assert (progress.spend_fen, progress.spend_needed_fen) == (SILVER - 1, 1)


async def test_a_purchase_delivered_again_is_counted_once_and_publishes_nothing() -> None:
    store = InMemoryStore(members=[known("m-1")])
    first = purchase("m-1", 3_000_000)
    await handle(on_purchase_recorded, first, fresh(store=store))

    again = await handle(on_purchase_recorded, first, fresh(store=store))

    assert again.events == []
    assert [f.spend_fen for f in store.facts_of("m-1")] == [3_000_000]


async def test_a_purchase_of_a_member_never_seen_creates_them_at_the_lowest_tier_and_upgrades_them() -> None:
    uow = await handle(on_purchase_recorded, purchase("m-new", SILVER), fresh())

    [changed] = uow.published(TierChanged)
    assert (changed.from_tier, changed.to_tier) == ("member", "silver")
    member = store_of(uow).member("m-new")
    assert (member.tier, member.enrolled_at, member.chain_id) == ("silver", None, CHAIN)


async def test_a_purchase_older_than_the_window_is_stored_but_does_not_count() -> None:
    long_ago = NOW - timedelta(days=DEFAULT_POLICY.qualification_window_days, seconds=1)
    uow = await handle(on_purchase_recorded, purchase("m-1", DIAMOND, long_ago), fresh(known("m-1")))

    assert [f.occurred_at for f in store_of(uow).facts_of("m-1")] == [long_ago]
    assert uow.published(TierChanged) == []
    assert only_progress(uow).spend_fen == 0


async def test_a_purchase_a_few_minutes_ahead_of_the_clock_counts_at_once_but_not_one_further_ahead() -> None:
    ahead = await handle(
        on_purchase_recorded, purchase("m-1", SILVER, NOW + domain.MAX_CLOCK_SKEW), fresh(known("m-1"))
    )
    too_far = await handle(
        on_purchase_recorded,
        purchase("m-2", SILVER, NOW + domain.MAX_CLOCK_SKEW + timedelta(microseconds=1)),
        fresh(known("m-2")),
    )

    assert [c.to_tier for c in ahead.published(TierChanged)] == ["silver"]
    assert too_far.published(TierChanged) == []
    assert only_progress(too_far).spend_fen == 0


async def test_the_review_date_of_an_upgrade_is_counted_in_the_chains_local_months() -> None:
    # 31 March 03:00 UTC is the 31st in Shanghai (a month later is clamped to 30 April) but still
    # the 30th in Los Angeles (a month later is 30 April there, 1 May in UTC)
    monthly = DEFAULT_POLICY.model_copy(update={"review_months": 1})
    at = datetime(2025, 3, 31, 3, 0, tzinfo=UTC)
    reviews = []
    for zone in (SHANGHAI, ZoneInfo("America/Los_Angeles")):
        uow = FakeUnitOfWork(clock=FixedClock(at))
        uow.provide(store_key(), InMemoryStore(policy=monthly, timezone=zone, members=[known("m-1")]))
        await handle(on_purchase_recorded, purchase("m-1", SILVER, at), uow)
        [changed] = uow.published(TierChanged)
        reviews.append(changed.review_at)

    assert reviews == [datetime(2025, 4, 30, 3, 0, tzinfo=UTC), datetime(2025, 5, 1, 3, 0, tzinfo=UTC)]


# ---- PurchaseRefunded ---------------------------------------------------------------------------


async def test_a_refund_takes_the_spend_away_but_never_downgrades() -> None:
    gold = known("m-1", "gold", since=NOW - timedelta(days=2), review_at=NOW + timedelta(days=363))
    uow = await handle(
        on_purchase_refunded,
        refund("m-1", GOLD),
        fresh(gold, facts=(Fact("bought", "m-1", NOW - timedelta(days=2), spend_fen=GOLD),)),
    )

    store = store_of(uow)
    assert [f.spend_fen for f in store.facts_of("m-1")] == [GOLD, -GOLD]
    assert store.member("m-1").tier == "gold"
    assert uow.published(TierChanged) == []
    progress = only_progress(uow)
    assert (progress.tier, progress.spend_fen, progress.spend_needed_fen) == ("gold", 0, DIAMOND)


async def test_a_refund_without_a_member_id_counts_against_the_events_subject() -> None:
    e = event(
        PurchaseRefunded(purchase_id="p-1", refund_id="r-1", amount_fen=100, occurred_at=NOW),
        member_id="m-1",
        chain_id=CHAIN,
    )
    uow = await handle(on_purchase_refunded, e, fresh(known("m-1")))

    assert [(f.member_id, f.spend_fen) for f in store_of(uow).facts] == [("m-1", -100)]


# ---- PointsChanged ------------------------------------------------------------------------------


async def test_qualifying_points_reaching_diamond_upgrade_a_member_several_tiers_in_one_step() -> None:
    uow = await handle(on_points_changed, points("m-1", 300_000), fresh(known("m-1")))

    assert [(c.from_tier, c.to_tier) for c in uow.published(TierChanged)] == [("member", "diamond")]
    assert [f.points for f in store_of(uow).facts_of("m-1")] == [300_000]
    assert only_progress(uow).next_tier is None


async def test_points_that_do_not_qualify_or_do_not_change_are_ignored() -> None:
    store = InMemoryStore()
    ignored = [points("m-1", 400_000, qualifying=False), points("m-1", 0)]
    for e in ignored:
        uow = await handle(on_points_changed, e, fresh(store=store))
        assert uow.events == []

    assert (store.facts, store.members) == ([], {})


async def test_a_points_change_without_occurred_at_counts_at_the_events_time() -> None:
    e = points("m-1", 1_000, occurred_at=None)
    uow = await handle(on_points_changed, e, fresh(known("m-1")))

    assert [f.occurred_at for f in store_of(uow).facts_of("m-1")] == [e.time]


async def test_a_reversal_of_qualifying_points_takes_them_away_without_a_downgrade() -> None:
    silver = known("m-1", "silver")
    uow = await handle(
        on_points_changed,
        points("m-1", -50_000),
        fresh(silver, facts=(Fact("earned", "m-1", NOW - timedelta(days=1), points=50_000),)),
    )

    assert store_of(uow).member("m-1").tier == "silver"
    assert uow.published(TierChanged) == []
    assert only_progress(uow).points == 0


# ---- batches ------------------------------------------------------------------------------------


async def test_a_batch_locks_its_known_members_once_and_qualifies_each_member_once_at_its_end() -> None:
    uow = fresh(known("m-2"), known("m-1"))
    await apply_batch(
        [
            points("m-2", 10_000),
            purchase("m-1", 2_000_000, NOW - timedelta(days=3)),
            purchase("m-1", 2_000_000, NOW - timedelta(days=2)),
            purchase("m-1", 1_000_000, NOW - timedelta(days=1)),
            points("m-3", 60_000),  # never seen: created by its handler
        ],
        uow,
    )

    store = store_of(uow)
    # prepare's one lock of the known members, in member order, then the unknown m-3's upsert
    assert store.locked == ["m-1", "m-2", "m-3"]
    assert [(c.from_tier, c.to_tier) for c in uow.published(TierChanged)] == [("member", "silver")] * 2
    progress = {e.subject: e.data for e in uow.events if isinstance(e.data, TierProgressChanged)}
    assert {m: (p.tier, p.spend_fen, p.points) for m, p in progress.items()} == {
        "m-1": ("silver", SILVER, 0),
        "m-2": ("member", 0, 10_000),
        "m-3": ("silver", 0, 60_000),
    }
    assert len(store.facts) == 5


async def test_a_batch_skips_the_facts_stored_before_it() -> None:
    again = purchase("m-1", 3_000_000)
    uow = fresh(known("m-1"), facts=(Fact(again.id, "m-1", NOW, spend_fen=3_000_000),))
    await apply_batch([again, purchase("m-1", 1_000_000, NOW - timedelta(hours=1))], uow)

    assert sorted(f.spend_fen for f in store_of(uow).facts) == [1_000_000, 3_000_000]
    assert uow.published(TierChanged) == []  # counted twice, 6,000,000 would have reached silver
    assert only_progress(uow).spend_fen == 4_000_000


async def test_a_batch_of_facts_all_stored_before_publishes_nothing() -> None:
    again = purchase("m-1", SILVER)
    uow = fresh(known("m-1"), facts=(Fact(again.id, "m-1", NOW, spend_fen=SILVER),))
    await apply_batch([again], uow)

    assert uow.events == []
    assert len(store_of(uow).facts) == 1


async def test_an_enrolment_and_purchases_in_one_batch_publish_one_progress_snapshot() -> None:
    uow = fresh()
    await apply_batch(
        [enrolment("m-1", NOW - timedelta(minutes=1)), purchase("m-1", 1_000_000), purchase("m-1", 500_000)], uow
    )

    progress = only_progress(uow)
    assert (progress.tier, progress.spend_fen) == ("member", 1_500_000)
    assert store_of(uow).member("m-1").since == NOW - timedelta(minutes=1)


def test_the_consumer_table_sends_each_event_type_to_its_handler() -> None:
    expected = {
        MemberEnrolled: on_member_enrolled,
        PurchaseRecorded: on_purchase_recorded,
        PurchaseRefunded: on_purchase_refunded,
        PointsChanged: on_points_changed,
        MemberErased: on_member_erased,
    }
    assert expected == HANDLERS


async def test_an_erased_members_override_reason_is_forgotten_and_their_tier_kept() -> None:
    uow = fresh(known("m-1", tier="gold", override_tier="gold", override_reason="VIP complaint of 李女士"))
    await handle(on_member_erased, event(MemberErased(member_id="m-1", erased_at=NOW), chain_id=CHAIN), uow)
    member = store_of(uow).member("m-1")
    assert member.override_reason == "(erased)" and member.tier == "gold" and member.override_tier == "gold"
    assert not uow.events


async def test_an_erasure_naming_another_chains_member_is_refused_and_changes_nothing() -> None:
    uow = fresh(known("m-1", override_tier="gold", override_reason="VIP"))
    forged = event(MemberErased(member_id="m-1", erased_at=NOW), chain_id="chain-2")
    with pytest.raises(MemberOfAnotherChain):
        await handle(on_member_erased, forged, uow)
    assert store_of(uow).member("m-1").override_reason == "VIP"


# ---- events naming another chain's member (forged or misrouted) ---------------------------------


def _forged(e: CloudEvent[Any], chain_id: str = "chain-2") -> CloudEvent[Any]:
    """The same event, naming another chain than its member's."""
    return e.model_copy(update={"chainid": chain_id})


def _members_of_chain_1(store: InMemoryStore) -> dict[str, Member]:
    return dict(store.members)


@pytest.mark.parametrize(
    "make",
    [
        lambda: purchase("m-1", GOLD),
        lambda: refund("m-1", 1_000_000),
        lambda: points("m-1", 200_000),
        lambda: enrolment("m-1", NOW),
    ],
    ids=["purchase", "refund", "points", "enrolment"],
)
async def test_an_event_naming_a_member_of_another_chain_is_refused_and_changes_nothing(make: Any) -> None:
    store = InMemoryStore(members=[known("m-1", "silver")])
    before = _members_of_chain_1(store)
    forged = _forged(make())

    with pytest.raises(MemberOfAnotherChain) as refused:
        await handle(HANDLERS[type(forged.data)], forged, fresh(store=store))

    assert store.members == before and store.facts == [] and store.history == []
    assert "chain-1" not in str(refused.value)  # the dead letter is the forger's chain's to read
    # one-by-one retry or a batch: refused the same way, before anything is written or published
    uow = fresh(store=store)
    with pytest.raises(MemberOfAnotherChain):
        await apply_batch([forged], uow)
    assert store.members == before and store.facts == [] and uow.events == []


async def test_a_fact_of_an_unknown_member_still_creates_the_member_in_the_events_chain() -> None:
    store = InMemoryStore()
    await handle(on_purchase_recorded, _forged(purchase("m-9", 1_000_000), "chain-2"), fresh(store=store))
    assert store.member("m-9").chain_id == "chain-2"  # a fact may overtake the enrolment (kept as before)


# ---- a rebuild's snapshot of the tier ------------------------------------------------------------


async def test_a_snapshot_carries_the_tier_and_progress_the_live_events_carried() -> None:
    uow = await handle(on_purchase_recorded, purchase("m-1", SILVER + 1_000), fresh(known("m-1")))
    [changed] = uow.published(TierChanged)
    progress = only_progress(uow)
    store = store_of(uow)
    [member] = await store.lock_members(member_ids=["m-1"])
    policy = await store.policy(chain_id=CHAIN)
    totals = await store.trailing_totals(member_ids=["m-1"], window_days=policy.qualification_window_days, as_of=NOW)
    spend, pts = totals["m-1"]
    snapshot = tier_snapshot(
        policy=policy, tier=member.tier, since=member.since, spend_fen=spend, points=pts, review_at=member.review_at
    )
    assert (snapshot.tier, snapshot.tier_name, snapshot.since, snapshot.review_at) == (
        changed.to_tier,
        changed.to_tier_name,
        changed.effective_at,
        changed.review_at,
    )
    assert snapshot.model_dump(exclude={"since"}) == progress.model_dump()


async def test_upgrades_decided_at_the_end_of_a_batch_carry_their_own_members_correlation() -> None:
    """Qualification runs once per member after the batch's handlers: each TierChanged must continue the
    story of its member's purchase (correlation and cause), not of the event the batch happened to end with."""
    first = purchase("m-1", GOLD).model_copy(update={"correlationid": "pos-request-1"})
    second = purchase("m-2", GOLD).model_copy(update={"correlationid": "pos-request-2"})
    uow = await apply_batch([first, second], fresh(known("m-1"), known("m-2")))

    changes = {e.subject: e for e in uow.events if isinstance(e.data, TierChanged)}
    assert set(changes) == {"m-1", "m-2"}
    assert (changes["m-1"].correlationid, changes["m-1"].causationid) == ("pos-request-1", first.id)
    assert (changes["m-2"].correlationid, changes["m-2"].causationid) == ("pos-request-2", second.id)

"""Benefits' event handlers on the in-memory store: what each event grants, revokes and announces.

Each event is applied in a unit of work of its own (as the consumer would), all against one
:class:`InMemoryStore`; the tests assert on the events published and the rows the store holds.
The SQL behind the real store is exercised by the integration tests.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benefits import domain
from benefits.handlers import (
    on_member_enrolled,
    on_member_erased,
    on_purchase_recorded,
    on_referral_completed,
    on_tier_changed,
)
from benefits.store import BenefitsStore
from services.benefits.tests.unit.memory_store import InMemoryStore
from shared.consumer import Handler, MemberOfAnotherChain
from shared.events import (
    BenefitGranted,
    BenefitRevoked,
    EventData,
    MemberEnrolled,
    MemberErased,
    PurchaseItem,
    PurchaseRecorded,
    ReferralCompleted,
    TierChanged,
)
from shared.policy import DEFAULT_POLICY
from shared.testing import FakeUnitOfWork, FixedClock, event, handle

CHAIN = "chain-1"
LA_CHAIN = "chain-la"
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2025, 3, 1, 4, 0, tzinfo=UTC)
RANK = [t.code for t in DEFAULT_POLICY.tiers]
SILVER_CODES = {"discount_percent", "priority_booking", "annual_skin_check"}
GOLD_CODES = SILVER_CODES | {"dedicated_doctor"}


async def apply(
    store: InMemoryStore, handler: Handler, data: EventData, *, member_id: str = "m1", chain_id: str = CHAIN
) -> FakeUnitOfWork:
    """Apply one event in a unit of work of its own over ``store``, as the consumer would."""
    uow = FakeUnitOfWork(clock=FixedClock(T0 + timedelta(days=400)))
    uow.provide(BenefitsStore, store)
    return await handle(handler, event(data, member_id=member_id, chain_id=chain_id), uow)


def enrolment(member_id: str = "m1", at: datetime = T0) -> MemberEnrolled:
    return MemberEnrolled(
        member_id=member_id,
        member_no="M0001",
        home_clinic_id="clinic-1",
        source="walk_in",
        birthday=date(1990, 6, 15),
        enrolled_at=at,
    )


def tier_change(from_tier: str | None, to_tier: str, at: datetime, *, reason: Any = None) -> TierChanged:
    step = RANK.index(to_tier) - RANK.index(from_tier or "member")
    direction = "up" if step > 0 else "down" if step < 0 else "none"
    return TierChanged(
        from_tier=from_tier,
        to_tier=to_tier,
        direction=direction,
        reason=reason or ("qualified" if direction == "up" else "review"),
        policy_version=1,
        effective_at=at,
    )


def purchase(purchase_id: str, amount_fen: int, at: datetime, member_id: str = "m1") -> PurchaseRecorded:
    return PurchaseRecorded(
        purchase_id=purchase_id,
        pos_txn_id=f"txn-{purchase_id}",
        clinic_id="clinic-1",
        member_id=member_id,
        amount_fen=amount_fen,
        occurred_at=at,
        items=[PurchaseItem(sku="hydrafacial", category="skin_care", amount_fen=amount_fen, qty=1)],
    )


async def member_at(store: InMemoryStore, tier: str, *, member_id: str = "m1", at: datetime = T0) -> None:
    """An enrolled member moved to ``tier`` at ``at`` (enrolled just before)."""
    await apply(store, on_member_enrolled, enrolment(member_id, at - timedelta(hours=1)), member_id=member_id)
    if tier != "member":
        await apply(store, on_tier_changed, tier_change("member", tier, at), member_id=member_id)


# ---- MemberEnrolled -----------------------------------------------------------------------------


async def test_an_enrolled_member_holds_the_lowest_tiers_benefits_and_they_are_announced() -> None:
    store = InMemoryStore()
    uow = await apply(store, on_member_enrolled, enrolment())
    assert store.members["m1"].tier == "member" and store.members["m1"].birthday == date(1990, 6, 15)
    assert store.active_codes("m1") == {"discount_percent", "priority_booking"}
    granted = uow.published(BenefitGranted)
    assert {g.code for g in granted} == {"discount_percent", "priority_booking"}
    assert {g.benefit_id for g in granted} == {e.benefit_id for e in store.of("m1")}
    assert all(e.valid_from == T0 and e.tier == "member" for e in store.of("m1"))


async def test_an_enrolment_that_arrives_after_a_tier_change_keeps_the_tier_and_adds_the_birthday() -> None:
    store = InMemoryStore()
    await apply(store, on_tier_changed, tier_change("member", "gold", T0 + timedelta(minutes=5)))
    uow = await apply(store, on_member_enrolled, enrolment())
    assert store.members["m1"].tier == "gold" and store.members["m1"].birthday == date(1990, 6, 15)
    assert store.active_codes("m1") == GOLD_CODES
    assert uow.published(BenefitGranted) == []  # gold's benefits were granted by the tier change already
    assert uow.published(BenefitRevoked) == []


# ---- TierChanged --------------------------------------------------------------------------------


async def test_an_upgrade_grants_the_new_tiers_benefits_and_keeps_those_already_held() -> None:
    store = InMemoryStore()
    await apply(store, on_member_enrolled, enrolment())
    [booking] = store.of("m1", "priority_booking")
    uow = await apply(store, on_tier_changed, tier_change("member", "silver", T0 + timedelta(days=1)))
    assert store.members["m1"].tier == "silver"
    assert store.active_codes("m1") == SILVER_CODES
    assert store.of("m1", "priority_booking") == [booking]  # kept, not granted again
    assert {g.code for g in uow.published(BenefitGranted)} == {"annual_skin_check", "discount_percent"}
    # the member tier's 100% discount is not silver's 95%: replaced
    [revoked] = uow.published(BenefitRevoked)
    assert revoked.code == "discount_percent"
    assert [e.percent for e in store.of("m1", "discount_percent") if e.status == "active"] == [95]


async def test_a_downgrade_revokes_the_benefits_the_lower_tier_does_not_have() -> None:
    store = InMemoryStore()
    await member_at(store, "gold")
    [doctor] = store.of("m1", "dedicated_doctor")
    uow = await apply(store, on_tier_changed, tier_change("gold", "silver", T0 + timedelta(days=1)))
    assert store.active_codes("m1") == SILVER_CODES
    assert store.of("m1", "dedicated_doctor")[0].status == "revoked"
    assert doctor.benefit_id in {r.benefit_id for r in uow.published(BenefitRevoked)}


async def test_a_tier_change_older_than_the_tier_held_is_a_replay_and_changes_nothing() -> None:
    store = InMemoryStore()
    await member_at(store, "gold", at=T0 + timedelta(days=2))
    before = list(store.rows)
    uow = await apply(store, on_tier_changed, tier_change("member", "silver", T0 + timedelta(days=1)))
    assert store.members["m1"].tier == "gold"
    assert store.rows == before and uow.events == []
    assert [c.to_tier for c in store.changes["m1"]] == ["gold"]


async def test_the_same_tier_change_applied_twice_grants_once() -> None:
    store = InMemoryStore()
    await apply(store, on_member_enrolled, enrolment())
    upgrade = tier_change("member", "silver", T0 + timedelta(days=1))
    await apply(store, on_tier_changed, upgrade)
    again = await apply(store, on_tier_changed, upgrade)
    assert again.published(BenefitGranted) == [] and again.published(BenefitRevoked) == []
    assert len(store.of("m1", "annual_skin_check")) == 1


async def test_a_tier_year_begins_on_the_chains_local_date_not_shanghais() -> None:
    # 06:00 UTC on 1 June: still 31 May in Los Angeles, already 1 June (14:00) in Shanghai
    at = datetime(2025, 6, 1, 6, 0, tzinfo=UTC)
    store = InMemoryStore(zones={LA_CHAIN: LOS_ANGELES})
    await apply(store, on_member_enrolled, enrolment(at=at - timedelta(days=1)), chain_id=LA_CHAIN)
    uow = await apply(store, on_tier_changed, tier_change("member", "silver", at), chain_id=LA_CHAIN)
    [check] = store.of("m1", "annual_skin_check")
    assert check.period == "2025-05-31" != at.astimezone(SHANGHAI).date().isoformat()
    assert (check.valid_from, check.valid_until) == (at, at + timedelta(days=365))
    [granted] = [g for g in uow.published(BenefitGranted) if g.code == "annual_skin_check"]
    assert granted.benefit_id == check.benefit_id


async def test_a_review_in_another_local_day_replaces_last_tier_years_unused_skin_check_once() -> None:
    store = InMemoryStore(zones={LA_CHAIN: LOS_ANGELES})
    at = datetime(2025, 6, 1, 6, 0, tzinfo=UTC)  # 31 May in Los Angeles
    await apply(store, on_member_enrolled, enrolment(at=at - timedelta(days=1)), chain_id=LA_CHAIN)
    await apply(store, on_tier_changed, tier_change("member", "silver", at), chain_id=LA_CHAIN)
    [first] = store.of("m1", "annual_skin_check")
    # 2 hours later it is 1 June in Los Angeles: a new tier-year there (in Shanghai still the same day)
    review_at = at + timedelta(hours=2)
    review = tier_change("silver", "silver", review_at, reason="review")
    uow = await apply(store, on_tier_changed, review, chain_id=LA_CHAIN)
    await apply(store, on_tier_changed, review, chain_id=LA_CHAIN)  # the same review again: nothing more
    checks = store.of("m1", "annual_skin_check")
    assert [(c.period, c.status) for c in checks] == [("2025-05-31", "expired"), ("2025-06-01", "active")]
    assert checks[0].valid_until == review_at  # the unused allotment ends with its tier-year
    [revoked] = uow.published(BenefitRevoked)
    assert revoked.benefit_id == first.benefit_id and revoked.valid_until == review_at


async def test_an_upgrade_that_arrives_late_judges_again_the_large_purchases_made_since_it_took_effect() -> None:
    store = InMemoryStore()
    await apply(store, on_member_enrolled, enrolment())
    upgraded_at = T0 + timedelta(days=1)
    before = await apply(store, on_purchase_recorded, purchase("p-before", 600_000, upgraded_at - timedelta(hours=1)))
    after = await apply(store, on_purchase_recorded, purchase("p-after", 600_000, upgraded_at + timedelta(hours=1)))
    assert before.published(BenefitGranted) == after.published(BenefitGranted) == []  # no gold known yet
    uow = await apply(store, on_tier_changed, tier_change("member", "gold", upgraded_at))
    [pack] = store.of("m1", "care_pack")
    assert (pack.period, pack.tier, pack.valid_from) == ("p-after", "gold", upgraded_at + timedelta(hours=1))
    assert "care_pack" in {g.code for g in uow.published(BenefitGranted)}
    # the upgrade delivered again judges nothing twice
    again = await apply(store, on_tier_changed, tier_change("member", "gold", upgraded_at))
    assert again.published(BenefitGranted) == [] and len(store.of("m1", "care_pack")) == 1


# ---- ReferralCompleted --------------------------------------------------------------------------


def referral(count: int, referee: str, at: datetime = T0) -> ReferralCompleted:
    return ReferralCompleted(
        referrer_id="m1", referee_id=referee, purchase_id=f"p-{referee}", completed_at=at, referral_count=count
    )


async def test_a_referral_gives_the_referrer_a_voucher_and_the_referee_a_welcome_skin_check() -> None:
    store = InMemoryStore()
    uow = await apply(store, on_referral_completed, referral(1, "m2"))
    [voucher] = store.of("m1")
    [welcome] = store.of("m2")
    assert (voucher.code, voucher.value_fen, voucher.tier, voucher.remaining_uses) == (
        "referral_voucher",
        50_000,
        None,
        1,
    )
    assert voucher.valid_until == T0 + timedelta(days=365)
    assert (welcome.code, welcome.remaining_uses, welcome.tier) == ("welcome_skin_check", 1, None)
    assert sorted((e.subject, e.data.code) for e in uow.events) == [
        ("m1", "referral_voucher"),
        ("m2", "welcome_skin_check"),
    ]


async def test_the_third_referral_earns_the_milestone_voucher_and_a_redelivery_earns_nothing_more() -> None:
    store = InMemoryStore()
    for n, referee in enumerate(["m2", "m3"], start=1):
        await apply(store, on_referral_completed, referral(n, referee))
    third = event(referral(3, "m4"), member_id="m1", chain_id=CHAIN)
    for _ in range(2):  # the same event delivered twice (another consumer batch)
        uow = FakeUnitOfWork()
        uow.provide(BenefitsStore, store)
        await handle(on_referral_completed, third, uow)
    assert sorted(e.value_fen or 0 for e in store.of("m1")) == [50_000, 50_000, 100_000]
    assert uow.published(BenefitGranted) == []  # the second delivery
    assert len(store.of("m4")) == 1


# ---- PurchaseRecorded ---------------------------------------------------------------------------


async def test_a_gold_members_purchase_of_5000_yuan_earns_one_care_pack() -> None:
    store = InMemoryStore()
    await member_at(store, "gold")
    bought_at = T0 + timedelta(days=3)
    uow = await apply(store, on_purchase_recorded, purchase("p-1", 500_000, bought_at))
    [pack] = store.of("m1", "care_pack")
    assert (pack.period, pack.tier, pack.remaining_uses) == ("p-1", "gold", 1)
    assert (pack.valid_from, pack.valid_until) == (bought_at, bought_at + timedelta(days=90))
    [granted] = uow.published(BenefitGranted)
    assert granted.benefit_id == pack.benefit_id
    again = await apply(store, on_purchase_recorded, purchase("p-1", 500_000, bought_at))
    assert again.events == [] and len(store.of("m1", "care_pack")) == 1


async def test_a_smaller_purchase_a_silver_members_or_an_unknown_members_earns_no_care_pack() -> None:
    store = InMemoryStore()
    await member_at(store, "gold")
    await member_at(store, "silver", member_id="m2")
    small = await apply(store, on_purchase_recorded, purchase("p-small", 499_900, T0 + timedelta(days=1)))
    silver = await apply(store, on_purchase_recorded, purchase("p-silver", 900_000, T0 + timedelta(days=1), "m2"))
    stranger = await apply(store, on_purchase_recorded, purchase("p-who", 900_000, T0 + timedelta(days=1), "m9"))
    assert small.events == silver.events == stranger.events == []
    assert store.of("m1", "care_pack") == store.of("m2", "care_pack") == []
    # only purchases large enough, of known members, are kept for a later tier change to judge again
    assert set(store.purchases) == {"p-silver"}


async def test_a_purchase_made_before_an_upgrade_took_effect_earns_none_though_the_upgrade_arrived_first() -> None:
    store = InMemoryStore()
    upgraded_at = T0 + timedelta(days=1)
    await member_at(store, "gold", at=upgraded_at)
    uow = await apply(store, on_purchase_recorded, purchase("p-1", 600_000, upgraded_at - timedelta(milliseconds=1)))
    assert uow.events == [] and store.of("m1", "care_pack") == []
    at_once = await apply(store, on_purchase_recorded, purchase("p-2", 600_000, upgraded_at))
    [pack] = store.of("m1", "care_pack")  # an upgrade is in effect from its instant on
    assert pack.period == "p-2" and [g.benefit_id for g in at_once.published(BenefitGranted)] == [pack.benefit_id]


async def test_a_purchase_is_judged_by_the_tier_held_when_it_was_made_not_the_tier_held_now() -> None:
    store = InMemoryStore()
    await member_at(store, "gold")
    await apply(store, on_tier_changed, tier_change("gold", "silver", T0 + timedelta(days=10)))
    # made while gold, applied after the downgrade (enrollment's topic ran behind)
    uow = await apply(store, on_purchase_recorded, purchase("p-1", 600_000, T0 + timedelta(days=5)))
    [pack] = store.of("m1", "care_pack")
    assert (pack.period, pack.tier) == ("p-1", "gold")
    assert [g.code for g in uow.published(BenefitGranted)] == ["care_pack"]
    assert domain.tier_held_at(DEFAULT_POLICY, store.changes["m1"], T0 + timedelta(days=5)) == "gold"


@settings(max_examples=50, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 72), min_size=1, max_size=3),
    bought_after=st.integers(0, 240),
    arrives_after=st.integers(0, 3),
)
def test_whether_a_purchase_earns_a_care_pack_does_not_depend_on_where_it_arrives_among_upgrades(
    gaps: list[int], bought_after: int, arrives_after: int
) -> None:
    """Upgrades (member -> silver -> gold -> diamond, in order, as tiering publishes them) and one large
    purchase made at any time: wherever the purchase arrives among the upgrades, the member ends with a
    care pack for it exactly when the tier held when it was made has one."""
    tiers = RANK[: len(gaps) + 1]
    times = [T0 + timedelta(hours=sum(gaps[: i + 1])) for i in range(len(gaps))]
    upgrades = [tier_change(a, b, at) for a, b, at in zip(tiers[:-1], tiers[1:], times, strict=True)]
    bought = purchase("p-1", 600_000, T0 + timedelta(hours=bought_after))

    async def packs(purchase_after: int) -> list[tuple[str | None, domain.Status]]:
        store = InMemoryStore()
        await apply(store, on_member_enrolled, enrolment(at=T0 - timedelta(hours=1)))
        for upgrade in upgrades[:purchase_after]:
            await apply(store, on_tier_changed, upgrade)
        await apply(store, on_purchase_recorded, bought)
        for upgrade in upgrades[purchase_after:]:
            await apply(store, on_tier_changed, upgrade)
        return [(e.period, e.status) for e in store.of("m1", "care_pack")]

    held = domain.tier_held_at(
        DEFAULT_POLICY, [domain.TierChange(u.effective_at, u.to_tier) for u in upgrades], bought.occurred_at
    )
    expected = [("p-1", "active")] if held in {"gold", "diamond"} else []
    assert asyncio.run(packs(min(arrives_after, len(upgrades)))) == expected
    assert asyncio.run(packs(len(upgrades))) == expected


async def test_an_erased_member_loses_the_birthday_and_keeps_the_entitlements() -> None:
    store = InMemoryStore()
    await apply(store, on_member_enrolled, enrolment())
    await apply(store, on_tier_changed, tier_change("member", "silver", T0 + timedelta(days=1)))
    held = store.active_codes("m1")

    uow = await apply(store, on_member_erased, MemberErased(member_id="m1", erased_at=T0 + timedelta(days=2)))

    assert store.members["m1"].birthday is None
    assert store.active_codes("m1") == held and held
    assert not uow.events


async def test_an_erasure_naming_another_chains_member_is_refused_and_changes_nothing() -> None:
    store = InMemoryStore()
    await apply(store, on_member_enrolled, enrolment())
    with pytest.raises(MemberOfAnotherChain):
        await apply(store, on_member_erased, MemberErased(member_id="m1", erased_at=T0), chain_id="chain-2")
    assert store.members["m1"].birthday == date(1990, 6, 15)


# ---- events naming another chain's member (forged or misrouted) ---------------------------------


def _snapshot(store: InMemoryStore) -> Any:
    return (
        {m: (v.chain_id, v.tier, v.tier_since, v.birthday) for m, v in store.members.items()},
        [(r.member_id, r.chain_id, r.entitlement) for r in store.rows],
        dict(store.changes),
        dict(store.purchases),
    )


def _referral(referrer: str, referee: str) -> ReferralCompleted:
    at = T0 + timedelta(days=2)
    return ReferralCompleted(
        referrer_id=referrer, referee_id=referee, purchase_id="p-9", completed_at=at, referral_count=3
    )


FORGED = [
    (on_member_enrolled, lambda: enrolment("m1", T0 + timedelta(days=2)), "m1"),
    (on_tier_changed, lambda: tier_change("silver", "diamond", T0 + timedelta(days=2)), "m1"),
    (on_tier_changed, lambda: tier_change("silver", "member", T0 - timedelta(days=2), reason="review"), "m1"),
    (on_purchase_recorded, lambda: purchase("p-forged", 900_000, T0 + timedelta(days=2)), "m1"),
    (
        on_referral_completed,
        lambda: ReferralCompleted(
            referrer_id="m1",
            referee_id="m-new",
            purchase_id="p-9",
            completed_at=T0 + timedelta(days=2),
            referral_count=3,
        ),
        "m1",
    ),
    (
        on_referral_completed,
        lambda: ReferralCompleted(
            referrer_id="m-new",
            referee_id="m1",
            purchase_id="p-9",
            completed_at=T0 + timedelta(days=2),
            referral_count=1,
        ),
        "m-new",
    ),
]


@pytest.mark.parametrize(
    ("handler", "make", "subject"),
    FORGED,
    ids=["enrolment", "upgrade", "stale-change", "large-purchase", "referrer", "referee"],
)
async def test_an_event_naming_a_member_of_another_chain_is_refused_and_changes_nothing(
    handler: Handler, make: Any, subject: str
) -> None:
    store = InMemoryStore()
    await member_at(store, "silver")  # m1 is chain-1's
    before = _snapshot(store)

    with pytest.raises(MemberOfAnotherChain) as refused:
        await apply(store, handler, make(), member_id=subject, chain_id="chain-forger")

    assert _snapshot(store) == before
    assert CHAIN not in str(refused.value)  # the dead letter is listed to the forger's chain


async def test_a_tier_change_of_an_unknown_member_still_makes_them_known_in_the_events_chain() -> None:
    store = InMemoryStore()
    await apply(store, on_tier_changed, tier_change("member", "gold", T0), member_id="m7", chain_id="chain-2")
    assert store.members["m7"].chain_id == "chain-2" and store.active_codes("m7") == GOLD_CODES

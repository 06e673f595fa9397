"""Enrollment's pure rules: referral codes and completion, refund limits, the status-view projection."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrollment import domain
from enrollment.domain import (
    CODE_ALPHABET,
    DropBenefit,
    KeepBenefit,
    Purchase,
    Referrer,
    SetBenefits,
    SetSnapshot,
    StatusDocument,
    accept_refund,
    apply,
    completes_referral,
    referral_purchase,
    status_as_of,
)
from shared.events import BenefitGranted, TierChanged, TierProgressChanged, TierSnapshot

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


# ---- referral codes ------------------------------------------------------------------------------


def test_a_referral_code_is_eight_unambiguous_characters() -> None:
    codes = {domain.new_referral_code() for _ in range(50)}
    assert all(len(c) == 8 and set(c) <= set(CODE_ALPHABET) for c in codes)
    assert not set(CODE_ALPHABET) & set("01IO")
    assert len(codes) > 1


def test_a_code_of_the_chain_gives_its_member_as_referrer() -> None:
    referrer = Referrer("r1", "chain-a", "13800000001")
    assert domain.referrer_for(referrer, chain_id="chain-a", phone="13800000002") == "r1"


def test_an_unknown_code_and_another_chains_code_are_refused_alike() -> None:
    with pytest.raises(domain.UnknownReferralCode):
        domain.referrer_for(None, chain_id="chain-a", phone="13800000002")
    with pytest.raises(domain.UnknownReferralCode):
        domain.referrer_for(Referrer("r1", "chain-b", "13800000001"), chain_id="chain-a", phone="13800000002")


def test_a_member_cannot_refer_their_own_phone() -> None:
    with pytest.raises(domain.SelfReferral):
        domain.referrer_for(Referrer("r1", "chain-a", "13800000001"), chain_id="chain-a", phone="13800000001")


def test_a_time_within_the_clock_skew_is_not_in_the_future() -> None:
    assert not domain.in_the_future(NOW + domain.MAX_CLOCK_SKEW, NOW)
    assert domain.in_the_future(NOW + domain.MAX_CLOCK_SKEW + timedelta(microseconds=1), NOW)


# ---- referral completion -------------------------------------------------------------------------


def purchase(pid: str, amount: int, *, days_ago: float, refunded: int = 0, member: str = "m1") -> Purchase:
    return Purchase(pid, member, amount, refunded, NOW - timedelta(days=days_ago))


def test_a_purchase_completes_a_referral_exactly_when_the_return_window_ends() -> None:
    at_the_end = purchase("p1", 100_000, days_ago=7)
    a_moment_later = Purchase("p2", "m1", 100_000, 0, at_the_end.occurred_at + timedelta(microseconds=1))
    assert completes_referral(at_the_end, as_of=NOW, pending_days=7, min_purchase_fen=100_000)
    assert not completes_referral(a_moment_later, as_of=NOW, pending_days=7, min_purchase_fen=100_000)


def test_a_purchase_refunded_below_the_minimum_does_not_complete_a_referral() -> None:
    kept, refunded = (purchase("p1", 120_000, days_ago=10, refunded=r) for r in (20_000, 20_001))
    assert completes_referral(kept, as_of=NOW, pending_days=7, min_purchase_fen=100_000)
    assert not completes_referral(refunded, as_of=NOW, pending_days=7, min_purchase_fen=100_000)


def test_the_earliest_qualifying_purchase_completes_the_referral() -> None:
    purchases = [
        purchase("p-late", 200_000, days_ago=8),
        purchase("p-small", 50_000, days_ago=30),
        purchase("p-early", 100_000, days_ago=9),
        purchase("p-new", 500_000, days_ago=1),
    ]
    assert referral_purchase(purchases, as_of=NOW, pending_days=7, min_purchase_fen=100_000) == "p-early"
    assert referral_purchase(purchases, as_of=NOW, pending_days=10, min_purchase_fen=100_000) is None


purchases_st = st.lists(
    st.builds(
        lambda i, amount, refunded_share, minutes_ago: Purchase(
            f"p{i:02d}", "m1", amount, amount * refunded_share // 100, NOW - timedelta(minutes=minutes_ago)
        ),
        st.integers(0, 99),
        st.integers(1, 500_000),
        st.integers(0, 100),
        st.integers(0, 30 * 24 * 60),
    ),
    max_size=8,
    unique_by=lambda p: p.purchase_id,
)


@given(purchases_st, st.integers(0, 30), st.integers(0, 300_000))
def test_a_referral_is_completed_by_the_earliest_purchase_that_qualifies_and_only_by_one(
    purchases: list[Purchase], pending_days: int, min_fen: int
) -> None:
    chosen = referral_purchase(purchases, as_of=NOW, pending_days=pending_days, min_purchase_fen=min_fen)
    qualifying = [
        p for p in purchases if completes_referral(p, as_of=NOW, pending_days=pending_days, min_purchase_fen=min_fen)
    ]
    assert (chosen is None) == (not qualifying)
    if chosen is not None:
        first = next(p for p in purchases if p.purchase_id == chosen)
        assert first in qualifying
        assert all((first.occurred_at, first.purchase_id) <= (p.occurred_at, p.purchase_id) for p in qualifying)


@given(purchases_st, st.integers(0, 30), st.integers(0, 300_000), st.integers(0, 60 * 24 * 10))
def test_a_due_referral_stays_due_as_time_passes(
    purchases: list[Purchase], pending_days: int, min_fen: int, later_minutes: int
) -> None:
    now = referral_purchase(purchases, as_of=NOW, pending_days=pending_days, min_purchase_fen=min_fen)
    later = referral_purchase(
        purchases, as_of=NOW + timedelta(minutes=later_minutes), pending_days=pending_days, min_purchase_fen=min_fen
    )
    assert now is None or later == now


# ---- refunds -------------------------------------------------------------------------------------


def refund(p: Purchase, amount: int, *, at: datetime = NOW, member_id: str | None = None) -> Purchase:
    return accept_refund(p, amount_fen=amount, occurred_at=at, member_id=member_id, now=NOW)


def test_a_refund_of_everything_that_remains_is_accepted_and_one_fen_more_is_not() -> None:
    p = purchase("p1", 100_000, days_ago=1, refunded=30_000)
    assert refund(p, 70_000).remaining_fen == 0
    with pytest.raises(domain.RefundExceedsPurchase) as refused:
        refund(p, 70_001)
    assert (refused.value.amount_fen, refused.value.remaining_fen) == (70_001, 70_000)


def test_a_refund_is_refused_for_another_member_in_the_future_or_before_its_purchase() -> None:
    p = purchase("p1", 100_000, days_ago=1)
    with pytest.raises(domain.NotThePurchasesMember):
        refund(p, 1, member_id="someone-else")
    assert refund(p, 1, member_id="m1").refunded_fen == 1
    with pytest.raises(domain.RefundInTheFuture):
        refund(p, 1, at=NOW + timedelta(minutes=6))
    with pytest.raises(domain.RefundBeforePurchase):
        refund(p, 1, at=p.occurred_at - timedelta(seconds=1))
    assert refund(p, 1, at=p.occurred_at).refunded_fen == 1


def test_another_members_refund_is_refused_for_that_before_its_amount() -> None:
    p = purchase("p1", 100, days_ago=1)
    with pytest.raises(domain.NotThePurchasesMember):
        refund(p, 1_000, member_id="someone-else")


@given(st.integers(1, 10**6), st.lists(st.integers(1, 400_000), max_size=20))
def test_refunds_never_add_up_to_more_than_the_purchase(amount: int, attempts: list[int]) -> None:
    p = Purchase("p1", "m1", amount, 0, NOW - timedelta(days=1))
    accepted = 0
    for attempt in attempts:
        remaining = p.remaining_fen
        try:
            p = refund(p, attempt)
        except domain.RefundExceedsPurchase:
            assert attempt > remaining
        else:
            assert attempt <= remaining
            accepted += attempt
        assert 0 <= p.refunded_fen <= p.amount_fen
    assert p.refunded_fen == accepted


# ---- the status view -----------------------------------------------------------------------------


def benefit(bid: str, code: str = "care_pack", uses: int | None = 1, valid_until: str | None = None) -> KeepBenefit:
    return KeepBenefit({"benefit_id": bid, "code": code, "remaining_uses": uses, "valid_until": valid_until})


def test_a_granted_benefit_event_becomes_its_entry() -> None:
    until = datetime(2026, 1, 1, tzinfo=UTC)
    change = domain.benefit_changed(
        BenefitGranted(benefit_id="b1", code="care_pack", remaining_uses=3, valid_until=until, value_fen=100)
    )
    assert change.benefit == {
        "benefit_id": "b1",
        "code": "care_pack",
        "remaining_uses": 3,
        "valid_until": until.isoformat(),
    }


def test_a_tier_event_without_a_review_date_has_none() -> None:
    change = domain.tier_changed(
        TierChanged(
            from_tier=None,
            to_tier="silver",
            direction="up",
            reason="qualified",
            policy_version=1,
            effective_at=NOW,
        )
    )
    assert change == SetSnapshot(
        "tier", {"code": "silver", "name": "银卡会员", "since": NOW.isoformat(), "review_at": None}
    )


def test_changes_replace_snapshots_and_keep_or_drop_benefit_entries() -> None:
    doc = apply(None, SetSnapshot("points", {"balance": 1}))
    doc = apply(doc, SetSnapshot("points", {"balance": 2}))
    doc = apply(doc, benefit("b1"))
    doc = apply(doc, benefit("b2"))
    doc = apply(doc, benefit("b1", uses=0))
    doc = apply(doc, DropBenefit("b2"))
    doc = apply(doc, DropBenefit("never-granted"))
    assert doc == StatusDocument(points={"balance": 2}, benefits={"b1": benefit("b1", uses=0).benefit})


changes_st = st.lists(
    st.one_of(
        st.builds(
            SetSnapshot,
            st.sampled_from(["points", "tier", "progress"]),
            st.builds(lambda n: {"n": n}, st.integers(0, 5)),
        ),
        st.builds(lambda b, uses: benefit(b, uses=uses), st.sampled_from(["b1", "b2", "b3"]), st.integers(0, 3)),
        st.builds(DropBenefit, st.sampled_from(["b1", "b2", "b3"])),
    ),
    max_size=12,
)


def replay(changes: list[domain.Change]) -> StatusDocument:
    doc: StatusDocument | None = None
    for change in changes:
        doc = apply(doc, change)
    return doc or StatusDocument()


@given(changes_st, st.randoms(use_true_random=False))
def test_the_view_does_not_depend_on_the_order_of_changes_to_different_things(
    changes: list[domain.Change], random: Random
) -> None:
    # interleave the changes differently, keeping the order of those that touch the same thing
    # (one member's events arrive in order, per topic; different topics do not keep order)
    lanes: dict[tuple[str, str], list[domain.Change]] = {}
    for change in changes:
        lanes.setdefault(domain.touches(change), []).append(change)
    shuffled: list[domain.Change] = []
    while lanes:
        key = random.choice(sorted(lanes))
        shuffled.append(lanes[key].pop(0))
        if not lanes[key]:
            del lanes[key]
    assert replay(shuffled) == replay(changes)


@given(changes_st)
def test_writing_only_the_newest_snapshot_of_each_kind_gives_the_same_view(changes: list[domain.Change]) -> None:
    # what the handlers' batch does: snapshots kept until the end, the newest of each kind written
    newest: dict[str, SetSnapshot] = {}
    others: list[domain.Change] = []
    for change in changes:
        if isinstance(change, SetSnapshot):
            newest[change.column] = change
        else:
            others.append(change)
    assert replay([*others, *newest.values()]) == replay(changes)


def test_replacing_every_benefit_drops_the_entries_it_lacks_and_keeps_the_snapshots() -> None:
    doc = apply(None, SetSnapshot("tier", {"code": "gold"}))
    doc = apply(doc, benefit("bogus"))
    doc = apply(doc, benefit("b1", uses=3))
    doc = apply(doc, SetBenefits({"b1": benefit("b1", uses=1).benefit, "b2": benefit("b2").benefit}))
    assert doc == StatusDocument(
        tier={"code": "gold"}, benefits={"b1": benefit("b1", uses=1).benefit, "b2": benefit("b2").benefit}
    )
    assert apply(doc, SetBenefits({})).benefits == {}


with_rebuilds_st = st.lists(
    st.one_of(
        changes_st.map(lambda changes: changes[0] if changes else DropBenefit("b1")),
        st.builds(
            lambda ids: SetBenefits({b: benefit(b, uses=9).benefit for b in ids}),
            st.sets(st.sampled_from(["b1", "b2", "b3"])),
        ),
    ),
    max_size=12,
)


@given(with_rebuilds_st, st.randoms(use_true_random=False))
def test_a_rebuild_of_the_benefits_keeps_its_order_with_benefit_changes_and_commutes_with_the_rest(
    changes: list[domain.Change], random: Random
) -> None:
    # a random order that keeps every pair of changes that do not commute in their order
    remaining = list(changes)
    shuffled: list[domain.Change] = []
    while remaining:
        ready = [i for i, c in enumerate(remaining) if all(domain.commute(c, earlier) for earlier in remaining[:i])]
        shuffled.append(remaining.pop(random.choice(ready)))
    assert replay(shuffled) == replay(changes)


def test_a_tier_snapshot_sets_the_tier_and_progress_documents_its_live_events_set() -> None:
    review = datetime(2026, 6, 1, tzinfo=UTC)
    tier, progress = domain.tier_snapshot(
        TierSnapshot(
            tier="silver",
            tier_name=None,
            since=NOW,
            review_at=review,
            next_tier="gold",
            spend_fen=1,
            spend_needed_fen=2,
            points=3,
            points_needed=4,
            policy_version=5,
        )
    )
    assert tier == domain.tier_changed(
        TierChanged(
            from_tier="member",
            to_tier="silver",
            direction="up",
            reason="qualified",
            policy_version=5,
            effective_at=NOW,
            review_at=review,
        )
    )
    assert progress == domain.progress_changed(
        TierProgressChanged(
            tier="silver",
            next_tier="gold",
            spend_fen=1,
            spend_needed_fen=2,
            points=3,
            points_needed=4,
            review_at=review,
            policy_version=5,
        )
    )


ENROLLED = datetime(2025, 1, 1, tzinfo=UTC)


def test_a_member_without_events_is_a_member_since_enrolment_with_no_points() -> None:
    view = status_as_of(None, enrolled_at=ENROLLED, now=NOW)
    assert view.tier == {"code": "member", "name": "普通会员", "since": ENROLLED.isoformat(), "review_at": None}
    assert (view.progress, view.points, view.expiring, view.benefits) == ({}, {"balance": 0}, [], [])


def test_the_review_date_of_the_progress_counts_only_for_the_tier_held() -> None:
    tier = {"code": "gold", "name": "金卡会员", "since": ENROLLED.isoformat(), "review_at": "2026-01-01T00:00:00+00:00"}
    newer = {"tier": "gold", "review_at": "2026-03-01T00:00:00+00:00"}
    view = status_as_of(StatusDocument(tier=tier, progress=newer), enrolled_at=ENROLLED, now=NOW)
    assert view.tier["review_at"] == "2026-03-01T00:00:00+00:00"
    stale = {"tier": "silver", "review_at": "2026-03-01T00:00:00+00:00"}
    view = status_as_of(StatusDocument(tier=tier, progress=stale), enrolled_at=ENROLLED, now=NOW)
    assert view.tier["review_at"] == "2026-01-01T00:00:00+00:00"


def test_pending_points_past_their_date_count_as_available_and_far_expiries_are_not_listed() -> None:
    points = {
        "balance": 500,
        "available": 100,
        "pending": 400,
        "pending_until": [
            {"points": 150, "available_at": (NOW - timedelta(hours=1)).isoformat()},
            {"points": 250, "available_at": (NOW + timedelta(hours=1)).isoformat()},
        ],
        "expiring": [
            {"points": 10, "expires_on": (NOW + timedelta(days=90)).date().isoformat()},
            {"points": 20, "expires_on": (NOW + timedelta(days=91)).date().isoformat()},
        ],
    }
    view = status_as_of(StatusDocument(points=points), enrolled_at=ENROLLED, now=NOW)
    assert (view.points["available"], view.points["pending"]) == (250, 250)
    assert [e["points"] for e in view.expiring] == [10]


@given(
    st.integers(0, 10_000),
    st.lists(st.tuples(st.integers(0, 1_000), st.integers(-1_000, 1_000)), max_size=6),
    st.integers(-2_000, 2_000),
)
def test_releasing_pending_points_keeps_their_sum(available: int, schedule: list[tuple[int, int]], at: int) -> None:
    pending = sum(points for points, _ in schedule)
    doc = {
        "balance": available + pending,
        "available": available,
        "pending": pending,
        "pending_until": [{"points": p, "available_at": (NOW + timedelta(minutes=m)).isoformat()} for p, m in schedule],
    }
    now = domain.points_now(doc, NOW + timedelta(minutes=at))
    assert now["available"] + now["pending"] == available + pending
    assert available <= now["available"] and 0 <= now["pending"] <= pending


def test_expired_benefits_drop_out_and_the_rest_are_sorted_by_code_then_id() -> None:
    benefits = {
        b.benefit_id: b.benefit
        for b in (
            benefit("b3", code="priority_booking"),
            benefit("b2", code="care_pack", valid_until=(NOW + timedelta(days=1)).isoformat()),
            benefit("b1", code="care_pack"),
            benefit("b0", code="annual_skin_check", valid_until=NOW.isoformat()),
        )
    }
    view = status_as_of(StatusDocument(benefits=benefits), enrolled_at=ENROLLED, now=NOW)
    assert [b["benefit_id"] for b in view.benefits] == ["b1", "b2", "b3"]


# ---- personal data (SPEC §8) --------------------------------------------------------------------


def test_a_member_under_14_needs_a_guardians_consent_until_the_14th_birthday() -> None:
    born = date(2012, 6, 15)
    assert domain.needs_guardian_consent(born, date(2026, 6, 14))
    assert not domain.needs_guardian_consent(born, date(2026, 6, 15))
    leap = date(2012, 2, 29)
    assert domain.needs_guardian_consent(leap, date(2026, 2, 28))
    assert not domain.needs_guardian_consent(leap, date(2026, 3, 1))


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 1, 1)), st.integers(0, 120))
def test_age_counts_whole_years(birthday: date, years: int) -> None:
    try:
        birthday_then = birthday.replace(year=birthday.year + years)
    except ValueError:  # 29 February in a common year
        return
    assert domain.age_on(birthday, birthday_then) == years
    assert domain.age_on(birthday, birthday_then - timedelta(days=1)) == years - 1


def test_enrolment_records_every_purpose_and_a_change_only_what_changed() -> None:
    at_enrolment = domain.consent_changes(None, {"marketing": True, "sms": True})
    assert at_enrolment == [("marketing", True), ("sms", True), ("email", False), ("sensitive_data", False)]
    before = {"marketing": True, "sms": True, "email": False, "sensitive_data": False}
    after = {"marketing": False, "sms": True, "email": False, "sensitive_data": True}
    assert domain.consent_changes(before, after) == [("marketing", False), ("sensitive_data", True)]
    assert domain.consent_changes(before, before) == []


def test_treatment_details_are_kept_only_with_the_sensitive_data_consent() -> None:
    items = [{"sku": "botox", "category": "injectables", "amount_fen": 100, "qty": 2}]
    assert domain.treatment_details(items, sensitive_consent=True) == items
    assert domain.treatment_details(items, sensitive_consent=False) == [{"amount_fen": 100, "qty": 2}]

"""The pure tier rules: qualification, progress and review dates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from shared.policy import DEFAULT_POLICY as P
from tiering.domain import is_upgrade, progress, qualified_tier, review_at

SILVER_FEN, GOLD_FEN, DIAMOND_FEN = 5_000_000, 15_000_000, 30_000_000


def test_a_new_member_qualifies_for_the_lowest_tier() -> None:
    assert qualified_tier(P, 0, 0) == "member"


def test_spend_exactly_at_the_threshold_qualifies_and_one_fen_less_does_not() -> None:
    assert qualified_tier(P, SILVER_FEN, 0) == "silver"
    assert qualified_tier(P, SILVER_FEN - 1, 0) == "member"
    assert qualified_tier(P, GOLD_FEN, 0) == "gold"
    assert qualified_tier(P, DIAMOND_FEN - 1, 0) == "gold"


def test_points_exactly_at_the_threshold_qualify_and_one_point_less_does_not() -> None:
    assert qualified_tier(P, 0, 50_000) == "silver"
    assert qualified_tier(P, 0, 49_999) == "member"
    assert qualified_tier(P, 0, 300_000) == "diamond"


def test_spend_or_points_qualifies_whichever_reaches_higher() -> None:
    assert qualified_tier(P, GOLD_FEN, 50_000) == "gold"
    assert qualified_tier(P, SILVER_FEN, 150_000) == "gold"
    assert qualified_tier(P, SILVER_FEN - 1, 49_999) == "member"


def test_spend_far_above_the_top_threshold_stays_at_the_top_tier() -> None:
    assert qualified_tier(P, 10**12, 10**9) == "diamond"


def test_negative_spend_after_refunds_qualifies_for_the_lowest_tier() -> None:
    assert qualified_tier(P, -1_000_000, 0) == "member"


def test_a_refund_below_the_threshold_lowers_the_qualified_tier_but_is_no_upgrade_or_change_for_the_holder() -> None:
    # the caller only ever moves a member up: a silver member who now qualifies for member is not "upgraded"
    assert qualified_tier(P, SILVER_FEN - 100_000, 0) == "member"
    assert not is_upgrade(P, "silver", qualified_tier(P, SILVER_FEN - 100_000, 0))
    assert is_upgrade(P, "member", "gold")


def test_progress_measures_against_the_next_tier_above_the_current_one() -> None:
    p = progress(P, "member", 1_000_000, 20_000)
    assert (p.next_tier, p.spend_fen, p.spend_needed_fen, p.points, p.points_needed) == (
        "silver",
        1_000_000,
        4_000_000,
        20_000,
        30_000,
    )


def test_progress_needs_nothing_once_a_threshold_is_passed() -> None:
    p = progress(P, "silver", GOLD_FEN + 1, 0)
    assert (p.next_tier, p.spend_needed_fen, p.points_needed) == ("gold", 0, 150_000)


def test_progress_at_the_top_tier_has_no_next_tier_and_needs_nothing() -> None:
    p = progress(P, "diamond", 0, 0)
    assert (p.next_tier, p.spend_needed_fen, p.points_needed) == (None, 0, 0)


def test_review_is_the_same_instant_a_year_later() -> None:
    taken = datetime(2025, 3, 10, 4, 30, tzinfo=UTC)
    assert review_at(taken, 12) == datetime(2026, 3, 10, 4, 30, tzinfo=UTC)


def test_review_day_is_clamped_to_the_end_of_a_shorter_month() -> None:
    assert review_at(datetime(2024, 8, 31, 2, 0, tzinfo=UTC), 6) == datetime(2025, 2, 28, 2, 0, tzinfo=UTC)
    assert review_at(datetime(2024, 2, 29, 2, 0, tzinfo=UTC), 12) == datetime(2025, 2, 28, 2, 0, tzinfo=UTC)


def test_review_months_are_counted_in_the_chain_time_zone() -> None:
    # 2024-03-30 20:00 UTC is already 31 March in Shanghai: a month later is clamped to 30 April there
    taken = datetime(2024, 3, 30, 20, 0, tzinfo=UTC)
    assert review_at(taken, 1) == datetime(2024, 4, 29, 20, 0, tzinfo=UTC)
    assert review_at(taken, 1, ZoneInfo("UTC")) == datetime(2024, 4, 30, 20, 0, tzinfo=UTC)


@given(
    spend=st.integers(-(10**9), 10**11),
    points=st.integers(-(10**6), 10**7),
    more_spend=st.integers(0, 10**9),
    more_points=st.integers(0, 10**6),
)
def test_more_spend_or_points_never_qualifies_for_a_lower_tier(
    spend: int, points: int, more_spend: int, more_points: int
) -> None:
    before = qualified_tier(P, spend, points)
    after = qualified_tier(P, spend + more_spend, points + more_points)
    assert not is_upgrade(P, after, before)


@given(spend=st.integers(0, 10**11), points=st.integers(0, 10**7))
def test_a_member_at_their_qualified_tier_needs_something_more_for_the_next(spend: int, points: int) -> None:
    tier = qualified_tier(P, spend, points)
    p = progress(P, tier, spend, points)
    assert p.next_tier is None or (p.spend_needed_fen > 0 and p.points_needed > 0)


@given(days=st.integers(0, 3650), hour=st.integers(0, 23), months=st.integers(1, 120))
def test_a_review_is_always_after_the_change_and_within_the_months_plus_a_few_days(
    days: int, hour: int, months: int
) -> None:
    taken = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=days, hours=hour)
    review = review_at(taken, months)
    assert taken + timedelta(days=28 * months - 3) <= review <= taken + timedelta(days=31 * months)

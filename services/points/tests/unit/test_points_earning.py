"""The earning rules of SPEC §4, as pure functions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from points import domain
from shared.policy import DEFAULT_POLICY

EARNING = DEFAULT_POLICY.earning
SHANGHAI = ZoneInfo("Asia/Shanghai")
ENROLLED = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)


def test_earns_one_point_per_whole_yuan_rounding_down() -> None:
    later = ENROLLED + timedelta(days=60)
    assert domain.purchase_points(12_399, later, ENROLLED, EARNING) == 123
    assert domain.purchase_points(99, later, ENROLLED, EARNING) == 0
    assert domain.purchase_points(100, later, ENROLLED, EARNING) == 1


def test_earns_double_points_until_the_30th_day_after_enrolment_and_single_from_then_on() -> None:
    just_inside = ENROLLED + timedelta(days=30) - timedelta(microseconds=1)
    at_the_edge = ENROLLED + timedelta(days=30)
    assert domain.purchase_points(10_050, ENROLLED, ENROLLED, EARNING) == 200
    assert domain.purchase_points(10_050, just_inside, ENROLLED, EARNING) == 200
    assert domain.purchase_points(10_050, at_the_edge, ENROLLED, EARNING) == 100


def test_a_purchase_long_before_enrolment_is_not_a_new_member_purchase() -> None:
    assert domain.purchase_points(10_000, ENROLLED - timedelta(minutes=1), ENROLLED, EARNING) == 200
    assert domain.purchase_points(10_000, ENROLLED - timedelta(days=1), ENROLLED, EARNING) == 100


def test_behaviour_points_come_from_the_policy_and_unknown_kinds_earn_nothing() -> None:
    assert domain.behaviour_points("lecture", EARNING) == 200
    assert domain.behaviour_points("survey", EARNING) == 50
    assert domain.behaviour_points("skin_test", EARNING) == 100
    assert domain.behaviour_points("karaoke", EARNING) == 0


def test_behaviour_points_over_the_monthly_cap_are_capped_not_awarded() -> None:
    assert domain.capped_award(200, 1_700, 2_000) == (200, 0)
    assert domain.capped_award(200, 1_900, 2_000) == (100, 100)
    assert domain.capped_award(200, 2_000, 2_000) == (0, 200)


def test_the_cap_month_turns_at_midnight_in_shanghai_not_in_utc() -> None:
    # 2025-01-31 16:30 UTC is already 2025-02-01 00:30 in Shanghai
    assert domain.local_month(datetime(2025, 1, 31, 15, 59, tzinfo=UTC), SHANGHAI) == date(2025, 1, 1)
    assert domain.local_month(datetime(2025, 1, 31, 16, 30, tzinfo=UTC), SHANGHAI) == date(2025, 2, 1)


def test_points_expire_at_the_end_of_the_month_24_months_later() -> None:
    assert domain.expires_on(datetime(2025, 3, 15, 4, tzinfo=UTC), SHANGHAI, 24) == date(2027, 3, 31)
    assert domain.expires_on(datetime(2025, 12, 1, 4, tzinfo=UTC), SHANGHAI, 24) == date(2027, 12, 31)


def test_expiry_lands_on_the_29th_of_february_in_a_leap_year() -> None:
    assert domain.expires_on(datetime(2026, 2, 10, tzinfo=UTC), SHANGHAI, 24) == date(2028, 2, 29)
    assert domain.expires_on(datetime(2025, 2, 10, tzinfo=UTC), SHANGHAI, 24) == date(2027, 2, 28)


def test_expiry_counts_from_the_local_month_of_earning() -> None:
    # 2026-01-31 17:00 UTC is February 1st in Shanghai: expires at the end of February 2028
    assert domain.expires_on(datetime(2026, 1, 31, 17, tzinfo=UTC), SHANGHAI, 24) == date(2028, 2, 29)


def test_points_are_pending_for_the_return_window() -> None:
    earned = datetime(2025, 5, 1, tzinfo=UTC)
    lot = domain.new_lot("l", 10, earned, DEFAULT_POLICY, SHANGHAI)
    assert lot.available_at == earned + timedelta(days=7)
    assert lot.is_pending(earned + timedelta(days=6, hours=23), SHANGHAI)
    assert lot.is_available(earned + timedelta(days=7), SHANGHAI)


def test_a_refund_reverses_points_in_proportion_rounding_down() -> None:
    assert (
        domain.reversal_points(
            earned=300, amount_fen=30_000, refunded_before_fen=0, refund_fen=10_000, reversed_before=0
        )
        == 100
    )
    assert (
        domain.reversal_points(
            earned=199, amount_fen=19_999, refunded_before_fen=0, refund_fen=10_000, reversed_before=0
        )
        == 99
    )


def test_refunds_adding_up_to_the_purchase_reverse_exactly_what_it_earned() -> None:
    first = domain.reversal_points(
        earned=199, amount_fen=19_900, refunded_before_fen=0, refund_fen=9_950, reversed_before=0
    )
    second = domain.reversal_points(
        earned=199, amount_fen=19_900, refunded_before_fen=9_950, refund_fen=9_950, reversed_before=first
    )
    assert (first, second) == (99, 100)
    assert (
        domain.reversal_points(
            earned=199, amount_fen=19_900, refunded_before_fen=19_900, refund_fen=500, reversed_before=199
        )
        == 0
    )


def test_a_purchase_that_earned_nothing_reverses_nothing() -> None:
    assert domain.reversal_points(earned=0, amount_fen=50, refunded_before_fen=0, refund_fen=50, reversed_before=0) == 0

"""Vouchers are offers (marketing: marketing consent, quiet hours); every other notification is
transactional and goes out at once."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from notify import templates
from notify.domain import (
    KINDS,
    QuietHours,
    benefit_granted_kind,
    earliest_delivery,
    is_marketing,
    is_voucher,
    last_valid_day,
    quiet_hours_end,
)

SH = ZoneInfo("Asia/Shanghai")
VOUCHER = KINDS["voucher_granted"]
NIGHT = QuietHours(time(23, 0), time(7, 0))
LUNCH = QuietHours(time(12, 0), time(14, 0))


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 5, day, hour, minute, tzinfo=SH)


def test_a_benefit_with_a_face_value_or_a_voucher_code_is_a_marketing_voucher() -> None:
    assert benefit_granted_kind("birthday_voucher", None) == "voucher_granted"
    assert benefit_granted_kind("referral_voucher", None) == "voucher_granted"
    assert benefit_granted_kind("milestone_gift", 100_000) == "voucher_granted"
    assert benefit_granted_kind("birthday_voucher", 100_000) == "voucher_granted"
    assert VOUCHER.marketing and is_marketing("voucher_granted")


def test_other_benefits_and_every_other_kind_stay_transactional() -> None:
    for code in ("priority_booking", "annual_skin_check", "discount_percent", "care_pack", "welcome_skin_check"):
        assert benefit_granted_kind(code, None) == "benefit_granted" and not is_voucher(code, None)
    for kind in ("benefit_granted", "tier_up", "tier_down", "points_expiring", "welcome", "referral_completed"):
        assert not is_marketing(kind)


def test_a_kind_no_longer_known_keeps_the_flag_recorded_when_it_was_queued() -> None:
    assert is_marketing("old_promotion", recorded=True) and not is_marketing("old_notice", recorded=False)


def test_quiet_hours_across_midnight_hold_marketing_until_seven() -> None:
    assert earliest_delivery(VOUCHER, NIGHT, at(1, 23, 30)) == at(2, 7)
    assert earliest_delivery(VOUCHER, NIGHT, at(2, 2)) == at(2, 7)
    assert earliest_delivery(VOUCHER, NIGHT, at(2, 6, 59)) == at(2, 7)
    assert earliest_delivery(VOUCHER, NIGHT, at(2, 7)) == at(2, 7)  # the end is outside: at once
    assert earliest_delivery(VOUCHER, NIGHT, at(2, 12)) == at(2, 12)
    assert earliest_delivery(VOUCHER, NIGHT, at(1, 23)) == at(2, 7)  # the start is inside


def test_quiet_hours_within_one_day_hold_marketing_until_their_end_the_same_day() -> None:
    assert earliest_delivery(VOUCHER, LUNCH, at(2, 11, 59)) == at(2, 11, 59)
    assert earliest_delivery(VOUCHER, LUNCH, at(2, 12)) == at(2, 14)
    assert earliest_delivery(VOUCHER, LUNCH, at(2, 13, 30)) == at(2, 14)
    assert earliest_delivery(VOUCHER, LUNCH, at(2, 14)) == at(2, 14)
    assert earliest_delivery(VOUCHER, LUNCH, at(2, 23, 30)) == at(2, 23, 30)


def test_transactional_kinds_and_members_without_quiet_hours_are_never_held() -> None:
    for kind in ("tier_up", "tier_down", "points_expiring", "welcome", "benefit_granted", "referral_completed"):
        assert earliest_delivery(KINDS[kind], NIGHT, at(2, 2)) == at(2, 2)
    assert earliest_delivery(VOUCHER, None, at(2, 2)) == at(2, 2)


def test_quiet_hours_are_read_in_the_chains_zone() -> None:
    utc_evening = datetime(2025, 5, 1, 16, 30, tzinfo=UTC)  # 00:30 the next day in Shanghai
    assert quiet_hours_end(NIGHT, utc_evening.astimezone(SH)) == at(2, 7)
    assert quiet_hours_end(NIGHT, utc_evening) is None  # 16:30 UTC would be daytime


@given(start=st.times(), length=st.integers(1, 24 * 60 - 1), offset=st.integers(0, 24 * 60 * 60 - 1))
def test_a_held_notification_is_due_at_the_end_of_the_window_within_a_day(
    start: time, length: int, offset: int
) -> None:
    start = start.replace(second=0, microsecond=0)
    end = (datetime.combine(date(2025, 1, 1), start) + timedelta(minutes=length)).time()
    quiet = QuietHours(start, end)
    now = datetime(2025, 5, 1, tzinfo=SH) + timedelta(seconds=offset)
    due = earliest_delivery(VOUCHER, quiet, now)
    assert now <= due < now + timedelta(days=1)
    assert not quiet.contains(due.time())
    if due > now:
        assert quiet.contains(now.time()) and due.time() == end


def test_a_voucher_message_states_its_value_and_last_day_in_both_languages() -> None:
    last_day = last_valid_day(datetime(2025, 7, 1, tzinfo=SH).astimezone(UTC), SH)
    assert last_day == date(2025, 6, 30)  # valid until local midnight: usable through the day before
    zh = templates.render(
        "voucher_granted",
        "zh-CN",
        {
            "name": "王女士",
            "voucher": templates.voucher("birthday_voucher", 100_000, "zh-CN"),
            "validity": templates.validity(last_day, "zh-CN"),
        },
    )
    en = templates.render(
        "voucher_granted",
        "en",
        {
            "name": "Wang",
            "voucher": templates.voucher("birthday_voucher", 100_000, "en"),
            "validity": templates.validity(last_day, "en"),
        },
    )
    assert "1000元生日礼券" in zh[1] and "有效期至2025-06-30" in zh[1]
    assert en[1] == "Wang, your 1,000-yuan birthday voucher is waiting for you, valid until 2025-06-30."


def test_a_voucher_without_a_value_or_an_end_still_reads_well() -> None:
    assert templates.voucher("referral_voucher", None, "en") == "referral voucher"
    assert templates.voucher("referral_voucher", 12_345, "zh-CN") == "123.45元推荐礼券"
    assert templates.validity(None, "en") == "with no end date" and templates.validity(None, "zh-CN") == "长期有效"
    assert last_valid_day(None, SH) is None

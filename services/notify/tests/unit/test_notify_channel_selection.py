"""Which channels a notification goes to: the member's preferences AND consent AND an address."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from notify.domain import (
    CHANNELS,
    DEFAULT_QUIET_HOURS,
    KINDS,
    Consents,
    Contact,
    Kind,
    Preferences,
    QuietHours,
    canonical_channels,
    earliest_delivery,
    has_marketing_consent,
    may_reach,
    select_channels,
    tier_change_kind,
)

TIER_UP = KINDS["tier_up"]
PROMO = Kind("promotion", marketing=True)
SH = ZoneInfo("Asia/Shanghai")


def contact(
    sms: bool = True,
    email: bool = True,
    marketing: bool = False,
    *,
    phone: str | None = "13800000000",
    address: str | None = "a@example.com",
) -> Contact:
    return Contact(name="王", phone=phone, email=address, consents=Consents(marketing=marketing, sms=sms, email=email))


def test_a_consenting_member_with_default_preferences_gets_every_channel() -> None:
    assert select_channels(TIER_UP, Preferences(), contact()) == ["webhook", "sms", "email"]


def test_sms_needs_sms_consent_and_email_needs_consent_and_an_address() -> None:
    assert select_channels(TIER_UP, Preferences(), contact(sms=False)) == ["webhook", "email"]
    assert select_channels(TIER_UP, Preferences(), contact(email=False)) == ["webhook", "sms"]
    assert select_channels(TIER_UP, Preferences(), contact(address=None)) == ["webhook", "sms"]
    assert select_channels(TIER_UP, Preferences(), contact(phone=None)) == ["webhook", "email"]


def test_the_webhook_needs_no_consent_but_follows_preferences() -> None:
    assert select_channels(TIER_UP, Preferences(), contact(sms=False, email=False)) == ["webhook"]
    assert select_channels(TIER_UP, Preferences(channels=("sms",)), contact(sms=False, email=False)) == []


def test_preferences_narrow_the_channels() -> None:
    assert select_channels(TIER_UP, Preferences(channels=("email", "webhook")), contact()) == ["webhook", "email"]
    assert select_channels(TIER_UP, Preferences(channels=()), contact()) == []


def test_transactional_kinds_do_not_need_marketing_consent() -> None:
    assert {k.code for k in KINDS.values() if k.marketing} == {"voucher_granted"}
    for kind in KINDS.values():
        if not kind.marketing:
            assert select_channels(kind, Preferences(), contact(marketing=False)) == ["webhook", "sms", "email"]


def test_marketing_needs_marketing_consent() -> None:
    assert select_channels(PROMO, Preferences(), contact(marketing=False)) == []
    assert select_channels(PROMO, Preferences(), contact(marketing=True)) == ["webhook", "sms", "email"]


def test_an_unknown_member_is_only_told_through_the_chains_backend() -> None:
    assert select_channels(TIER_UP, Preferences(), None) == ["webhook"]
    assert select_channels(PROMO, Preferences(), None) == []


@given(
    channels=st.lists(st.sampled_from(CHANNELS)),
    sms=st.booleans(),
    email=st.booleans(),
    marketing=st.booleans(),
    promo=st.booleans(),
)
def test_selected_channels_are_always_wanted_and_consented(
    channels: list[str], sms: bool, email: bool, marketing: bool, promo: bool
) -> None:
    c = contact(sms=sms, email=email, marketing=marketing)
    kind = PROMO if promo else TIER_UP
    chosen = select_channels(kind, Preferences(channels=canonical_channels(channels)), c)
    assert set(chosen) <= set(channels)
    assert len(chosen) == len(set(chosen))
    assert ("sms" not in chosen or sms) and ("email" not in chosen or email)
    assert not (promo and not marketing and chosen)


def test_a_message_may_reach_the_chains_backend_always_and_a_member_only_with_consent_and_an_address() -> None:
    # what delivery checks again when a notification comes due (consents may have changed since)
    assert may_reach("webhook", None) and may_reach("webhook", contact(sms=False, email=False))
    assert not may_reach("sms", None) and not may_reach("email", None)
    assert may_reach("sms", contact()) and not may_reach("sms", contact(sms=False))
    assert not may_reach("sms", contact(phone=None)) and not may_reach("email", contact(address=None))


def test_marketing_consent_is_unknown_and_so_missing_without_a_contact() -> None:
    assert has_marketing_consent(contact(marketing=True))
    assert not has_marketing_consent(contact(marketing=False)) and not has_marketing_consent(None)


def test_only_up_and_down_tier_changes_notify() -> None:
    assert (tier_change_kind("up"), tier_change_kind("down"), tier_change_kind("none")) == (
        "tier_up",
        "tier_down",
        None,
    )


def test_quiet_hours_wrap_past_midnight() -> None:
    assert DEFAULT_QUIET_HOURS.contains(time(23, 30)) and DEFAULT_QUIET_HOURS.contains(time(7, 59))
    assert not DEFAULT_QUIET_HOURS.contains(time(8, 0)) and not DEFAULT_QUIET_HOURS.contains(time(21, 59))
    lunch = QuietHours(time(12, 0), time(13, 0))
    assert lunch.contains(time(12, 30)) and not lunch.contains(time(13, 0))


def test_marketing_waits_for_the_end_of_quiet_hours_and_transactional_does_not() -> None:
    late = datetime(2025, 5, 1, 23, 15, tzinfo=SH)
    early = datetime(2025, 5, 2, 6, 0, tzinfo=SH)
    assert earliest_delivery(PROMO, DEFAULT_QUIET_HOURS, late) == datetime(2025, 5, 2, 8, 0, tzinfo=SH)
    assert earliest_delivery(PROMO, DEFAULT_QUIET_HOURS, early) == datetime(2025, 5, 2, 8, 0, tzinfo=SH)
    assert earliest_delivery(TIER_UP, DEFAULT_QUIET_HOURS, late) == late
    assert earliest_delivery(PROMO, None, late) == late
    noon = datetime(2025, 5, 2, 12, 0, tzinfo=SH)
    assert earliest_delivery(PROMO, DEFAULT_QUIET_HOURS, noon) == noon

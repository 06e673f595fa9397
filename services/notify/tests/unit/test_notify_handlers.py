"""Notify's event handlers on an in-memory store: what each event queues (or parks), for whom, on
which channels, when, and what it does to the contact projection. No database, no broker."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest

from notify import domain
from notify.handlers import (
    HANDLERS,
    on_benefit_granted,
    on_member_enrolled,
    on_member_updated,
    on_points_expiring,
    on_referral_completed,
    on_tier_changed,
)
from notify.store import store_key
from services.notify.tests.unit.memory_store import InMemoryStore
from shared.consumer import MemberOfAnotherChain
from shared.events import (
    BenefitGranted,
    CloudEvent,
    Consents,
    MemberEnrolled,
    MemberErased,
    MemberUpdated,
    PointsExpiringSoon,
    ReferralCompleted,
    TierChanged,
)
from shared.testing import FakeUnitOfWork, FixedClock, event, handle

SHANGHAI = ZoneInfo("Asia/Shanghai")
CHAIN = "chain-1"
#: 20:00 in Shanghai: outside the default quiet hours (22:00-08:00)
EVENING = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
#: 23:00 in Shanghai: inside them
LATE = datetime(2025, 6, 1, 15, 0, tzinfo=UTC)

SMS_ONLY = domain.Consents(sms=True)
EVERYTHING = domain.Consents(marketing=True, sms=True, email=True)


def unit(store: InMemoryStore, at: datetime = EVENING) -> FakeUnitOfWork:
    uow = FakeUnitOfWork(clock=FixedClock(at))
    uow.provide(store_key(), store)
    return uow


def known(
    member_id: str = "m1", consents: domain.Consents = SMS_ONLY, preferences: domain.Preferences | None = None
) -> InMemoryStore:
    """A store that knows one member (phone and email on file), with default preferences unless given."""
    contact = domain.Contact(name="李女士", phone="13812345678", email="li@example.com", consents=consents)
    return InMemoryStore().know(member_id, contact, preferences)


def enrolled(member_id: str = "m1", *, sms: bool = True, marketing: bool = False) -> MemberEnrolled:
    return MemberEnrolled(
        member_id=member_id,
        member_no="M000000001",
        home_clinic_id="sh-01",
        source="walk_in",
        birthday=date(1990, 2, 3),
        enrolled_at=EVENING,
        name="李女士",
        phone="13812345678",
        consents=Consents(marketing=marketing, sms=sms, email=False),
    )


def tier_changed(direction: Literal["up", "down", "none"] = "up", to_tier: str = "silver") -> TierChanged:
    return TierChanged(
        from_tier="member",
        to_tier=to_tier,
        direction=direction,
        reason="qualified",
        policy_version=1,
        effective_at=EVENING,
        to_tier_name="Silver Card",
    )


def birthday_voucher() -> BenefitGranted:
    # valid until local midnight of 1 July: usable through 30 June
    return BenefitGranted(
        benefit_id="b1",
        code="birthday_voucher",
        value_fen=100_000,
        valid_until=datetime(2025, 7, 1, tzinfo=SHANGHAI),
    )


# ---- the handler table --------------------------------------------------------------------------


def test_the_handler_table_takes_every_event_notify_reacts_to() -> None:
    assert set(HANDLERS) == {
        MemberEnrolled,
        MemberUpdated,
        MemberErased,
        TierChanged,
        BenefitGranted,
        PointsExpiringSoon,
        ReferralCompleted,
    }


# ---- MemberEnrolled -----------------------------------------------------------------------------


async def test_an_enrolment_records_the_contact_and_default_preferences_and_welcomes_on_every_consented_channel() -> (
    None
):
    store = InMemoryStore()
    uow = await handle(on_member_enrolled, event(enrolled(sms=True), chain_id=CHAIN), unit(store, at=LATE))

    assert store.contact("m1") == domain.Contact(name="李女士", phone="13812345678", consents=SMS_ONLY)
    assert store.preferences["m1"] == (CHAIN, domain.Preferences())
    welcome = store.queued("m1", "welcome")
    assert [n.channel for n in welcome] == ["webhook", "sms"]  # no email consent
    assert {n.title for n in welcome} == {"欢迎加入会员计划"} and "M000000001" in welcome[0].body
    # transactional: due at once, even inside the quiet hours
    assert all(n.next_attempt_at == LATE and n.data == {"member_no": "M000000001", "marketing": False} for n in welcome)
    assert uow.committed and uow.events == []  # notify publishes only when it delivers


async def test_an_enrolment_handled_twice_welcomes_once_per_channel() -> None:
    store = InMemoryStore()
    enrolment = event(enrolled(sms=True), chain_id=CHAIN)
    await handle(on_member_enrolled, enrolment, unit(store))
    await handle(on_member_enrolled, enrolment, unit(store))
    assert [n.channel for n in store.queued("m1", "welcome")] == ["webhook", "sms"]


async def test_a_second_enrolment_of_a_known_member_keeps_the_contact_and_preferences_on_file() -> None:
    english = domain.Preferences(channels=("webhook",), locale="en")
    store = known("m1", SMS_ONLY, english)
    await handle(on_member_enrolled, event(enrolled(sms=False), chain_id=CHAIN), unit(store))
    assert store.contact("m1") == domain.Contact(
        name="李女士", phone="13812345678", email="li@example.com", consents=SMS_ONLY
    )
    assert store.preferences["m1"] == (CHAIN, english)


async def test_an_enrolment_without_sms_consent_is_welcomed_on_the_chains_webhook_only() -> None:
    store = InMemoryStore()
    await handle(on_member_enrolled, event(enrolled(sms=False), chain_id=CHAIN), unit(store))
    assert [n.channel for n in store.queued("m1", "welcome")] == ["webhook"]


# ---- MemberUpdated ------------------------------------------------------------------------------


async def test_a_member_update_changes_only_what_it_carries() -> None:
    store = known("m1", SMS_ONLY)
    await handle(
        on_member_updated, event(MemberUpdated(member_id="m1", name="王女士", updated_at=EVENING)), unit(store)
    )
    assert store.contact("m1") == domain.Contact(
        name="王女士", phone="13812345678", email="li@example.com", consents=SMS_ONLY
    )

    new_consents = Consents(marketing=True, sms=False, email=True)
    await handle(
        on_member_updated,
        event(MemberUpdated(member_id="m1", email="wang@example.com", consents=new_consents, updated_at=EVENING)),
        unit(store),
    )
    assert store.contact("m1") == domain.Contact(
        name="王女士",
        phone="13812345678",
        email="wang@example.com",
        consents=domain.Consents(marketing=True, sms=False, email=True),
    )
    assert store.notifications == []


async def test_a_removed_email_is_forgotten_and_never_mailed_again() -> None:
    store = known("m1", domain.Consents(marketing=False, sms=True, email=True))
    await handle(on_tier_changed, event(tier_changed("up"), member_id="m1"), unit(store))
    assert "email" in [n.channel for n in store.queued("m1", "tier_up")]  # mailed while the address is on file
    store.notifications.clear()
    await handle(
        on_member_updated,
        event(MemberUpdated(member_id="m1", email=None, email_removed=True, updated_at=EVENING)),
        unit(store),
    )
    assert store.contact("m1").email is None
    await handle(on_tier_changed, event(tier_changed("up"), member_id="m1"), unit(store))
    assert "email" not in [n.channel for n in store.queued("m1", "tier_up")]


async def test_a_member_update_of_another_chains_member_changes_nothing() -> None:
    store = known("m1", SMS_ONLY)
    before = store.contact("m1")
    with pytest.raises(MemberOfAnotherChain):  # refused: the consumer dead-letters it
        await handle(
            on_member_updated,
            event(MemberUpdated(member_id="m1", name="someone else", updated_at=EVENING), chain_id="chain-2"),
            unit(store),
        )
    assert store.contact("m1") == before


async def test_withdrawn_sms_consent_applies_to_the_next_notification() -> None:
    store = known("m1", SMS_ONLY)
    await handle(
        on_member_updated,
        event(MemberUpdated(member_id="m1", consents=Consents(sms=False), updated_at=EVENING)),
        unit(store),
    )
    await handle(on_tier_changed, event(tier_changed("up"), member_id="m1"), unit(store))
    assert [n.channel for n in store.queued("m1", "tier_up")] == ["webhook"]


# ---- TierChanged --------------------------------------------------------------------------------


async def test_an_upgrade_is_announced_with_the_tiers_name_in_the_members_locale_on_their_channels() -> None:
    store = known("m1", EVERYTHING, domain.Preferences(channels=("sms", "webhook"), locale="en"))
    tier_up = event(tier_changed("up", "silver"), member_id="m1")
    await handle(on_tier_changed, tier_up, unit(store, at=LATE))

    queued = store.queued("m1", "tier_up")
    assert [n.channel for n in queued] == ["webhook", "sms"]  # the member's choice, in the fixed order
    assert {(n.locale, n.title) for n in queued} == {("en", "You are now Silver")}
    assert all(n.source_event_id == tier_up.id and n.next_attempt_at == LATE for n in queued)
    assert queued[0].data == {
        "from_tier": "member",
        "to_tier": "silver",
        "reason": "qualified",
        "effective_at": EVENING.isoformat(),
        "marketing": False,
    }
    assert store.timezone_lookups == 0  # a transactional kind needs no local time


async def test_a_chains_own_tier_is_named_as_the_policy_names_it() -> None:
    store = known("m1")
    await handle(on_tier_changed, event(tier_changed("up", "platinum"), member_id="m1"), unit(store))
    assert {n.title for n in store.queued("m1", "tier_up")} == {"恭喜升级为Silver Card"}


async def test_a_downgrade_is_announced_as_a_tier_down() -> None:
    store = known("m1")
    await handle(on_tier_changed, event(tier_changed("down", "member"), member_id="m1"), unit(store))
    assert [n.title for n in store.queued("m1")] == ["会员等级调整为普通会员", "会员等级调整为普通会员"]
    assert {n.kind for n in store.queued("m1")} == {"tier_down"}


async def test_a_tier_event_without_a_change_notifies_nobody_and_parks_nothing() -> None:
    store = InMemoryStore().know("m1", domain.Contact(consents=SMS_ONLY))
    await handle(on_tier_changed, event(tier_changed("none"), member_id="m1"), unit(store))
    await handle(on_tier_changed, event(tier_changed("none"), member_id="stranger"), unit(store))
    assert store.notifications == [] and store.parked == []


async def test_the_same_tier_event_handled_twice_queues_once_per_channel() -> None:
    store = known("m1")
    tier_up = event(tier_changed("up"), member_id="m1")
    await handle(on_tier_changed, tier_up, unit(store))
    await handle(on_tier_changed, tier_up, unit(store))
    assert [n.channel for n in store.queued("m1", "tier_up")] == ["webhook", "sms"]


# ---- BenefitGranted -----------------------------------------------------------------------------


async def test_a_benefit_that_is_no_voucher_is_a_transactional_benefit_granted_sent_at_once() -> None:
    store = known("m1")
    granted = BenefitGranted(benefit_id="b2", code="annual_skin_check", remaining_uses=1)
    await handle(on_benefit_granted, event(granted, member_id="m1"), unit(store, at=LATE))

    queued = store.queued("m1")
    assert {n.kind for n in queued} == {"benefit_granted"} and len(queued) == 2
    assert queued[0].title == "您获得了新权益：年度皮肤检测" and "annual_skin_check" in queued[0].body
    assert all(n.next_attempt_at == LATE for n in queued)
    assert queued[0].data == {"benefit_id": "b2", "code": "annual_skin_check", "valid_until": None, "marketing": False}


async def test_a_voucher_is_marketing_and_reaches_nobody_without_the_marketing_consent() -> None:
    store = known("m1", SMS_ONLY)
    await handle(on_benefit_granted, event(birthday_voucher(), member_id="m1"), unit(store))
    assert store.notifications == [] and store.parked == []


async def test_a_voucher_granted_in_the_quiet_hours_waits_for_their_end_and_states_its_value_and_last_day() -> None:
    store = known("m1", EVERYTHING)
    await handle(on_benefit_granted, event(birthday_voucher(), member_id="m1"), unit(store, at=LATE))

    queued = store.queued("m1", "voucher_granted")
    assert [n.channel for n in queued] == ["webhook", "sms", "email"]
    # 23:00 in Shanghai: held until 08:00 the next morning
    assert {n.next_attempt_at for n in queued} == {datetime(2025, 6, 2, 8, 0, tzinfo=SHANGHAI)}
    assert "1000元生日礼券" in queued[0].body and "有效期至2025-06-30" in queued[0].body
    assert queued[0].data["marketing"] is True and queued[0].data["last_valid_day"] == "2025-06-30"
    assert queued[0].data["value_fen"] == 100_000


async def test_a_voucher_is_judged_by_the_chains_own_time_zone() -> None:
    # 15:00 UTC is 23:00 in Shanghai (quiet) but 16:00 in London (not)
    store = known("m1", EVERYTHING)
    store.timezones[CHAIN] = ZoneInfo("Europe/London")
    await handle(on_benefit_granted, event(birthday_voucher(), member_id="m1", chain_id=CHAIN), unit(store, at=LATE))
    queued = store.queued("m1", "voucher_granted")
    assert queued and {n.next_attempt_at for n in queued} == {LATE}
    assert store.timezone_lookups == 1  # once per event, for both the last day and the quiet hours
    assert queued[0].data["last_valid_day"] == "2025-06-30"  # 1 July 00:00 Shanghai is 30 June in London


async def test_a_voucher_outside_the_quiet_hours_goes_out_at_once() -> None:
    store = known("m1", EVERYTHING, domain.Preferences(quiet_hours=None))
    await handle(on_benefit_granted, event(birthday_voucher(), member_id="m1"), unit(store, at=LATE))
    assert {n.next_attempt_at for n in store.queued("m1", "voucher_granted")} == {LATE}


# ---- PointsExpiringSoon -------------------------------------------------------------------------


async def test_points_expiring_soon_are_announced_with_the_points_and_their_day() -> None:
    store = known("m1")
    expiring = PointsExpiringSoon(points=1200, expires_on=date(2026, 3, 31))
    await handle(on_points_expiring, event(expiring, member_id="m1"), unit(store))

    queued = store.queued("m1", "points_expiring")
    assert [n.channel for n in queued] == ["webhook", "sms"]
    assert queued[0].title == "1200 积分即将过期" and "2026-03-31" in queued[0].body
    assert queued[0].data == {"points": 1200, "expires_on": "2026-03-31", "marketing": False}


# ---- ReferralCompleted --------------------------------------------------------------------------


async def test_a_completed_referral_is_announced_to_the_referrer_not_to_the_events_subject() -> None:
    store = known("referrer").know("referee", domain.Contact(consents=SMS_ONLY, phone="13900000000"))
    completed = ReferralCompleted(
        referrer_id="referrer", referee_id="referee", purchase_id="p1", completed_at=EVENING, referral_count=3
    )
    await handle(on_referral_completed, event(completed, member_id="referee"), unit(store))

    assert store.queued("referee") == []
    queued = store.queued("referrer", "referral_completed")
    assert [n.channel for n in queued] == ["webhook", "sms"]
    assert "3" in queued[0].body
    assert queued[0].data == {"referee_id": "referee", "purchase_id": "p1", "referral_count": 3, "marketing": False}


# ---- parked events ------------------------------------------------------------------------------


async def test_an_event_about_a_member_not_enrolled_yet_is_parked_and_queues_nothing() -> None:
    store = InMemoryStore()
    tier_up = event(tier_changed("up"), member_id="m1", chain_id=CHAIN)
    await handle(on_tier_changed, tier_up, unit(store))
    await handle(on_tier_changed, tier_up, unit(store))  # redelivered: kept once

    assert store.notifications == []
    assert [(p.event_id, p.member_id, p.chain_id) for p in store.parked] == [(tier_up.id, "m1", CHAIN)]


async def test_parked_events_are_handled_in_their_order_when_the_enrolment_arrives() -> None:
    store = InMemoryStore()
    tier_up = event(tier_changed("up"), member_id="m1", chain_id=CHAIN)
    expiring = event(PointsExpiringSoon(points=50, expires_on=date(2026, 1, 31)), member_id="m1", chain_id=CHAIN)
    someone_else = event(tier_changed("up"), member_id="m2", chain_id=CHAIN)
    for parked in (tier_up, expiring, someone_else):
        await handle(HANDLERS[type(parked.data)], parked, unit(store))
    assert len(store.parked) == 3

    await handle(on_member_enrolled, event(enrolled("m1", sms=True), chain_id=CHAIN), unit(store))

    assert [(n.kind, n.channel) for n in store.queued("m1")] == [
        ("welcome", "webhook"),
        ("welcome", "sms"),
        ("tier_up", "webhook"),
        ("tier_up", "sms"),
        ("points_expiring", "webhook"),
        ("points_expiring", "sms"),
    ]
    # each queued under its own event, so a redelivery of it later queues nothing new
    assert {n.source_event_id for n in store.queued("m1", "tier_up")} == {tier_up.id}
    assert {n.source_event_id for n in store.queued("m1", "points_expiring")} == {expiring.id}
    assert [p.event_id for p in store.parked] == [someone_else.id]  # another member's keeps waiting


async def test_a_parked_voucher_is_judged_against_the_consents_the_enrolment_brings() -> None:
    store = InMemoryStore()
    await handle(on_benefit_granted, event(birthday_voucher(), member_id="m1", chain_id=CHAIN), unit(store))
    assert len(store.parked) == 1
    await handle(on_member_enrolled, event(enrolled("m1", marketing=False), chain_id=CHAIN), unit(store))
    assert store.queued("m1", "voucher_granted") == [] and store.parked == []


async def test_an_event_parked_under_another_chain_is_not_taken_by_this_enrolment() -> None:
    store = InMemoryStore()
    other = event(tier_changed("up"), member_id="m1", chain_id="chain-2")
    await handle(on_tier_changed, other, unit(store))
    await handle(on_member_enrolled, event(enrolled("m1"), chain_id=CHAIN), unit(store))
    assert store.queued("m1", "tier_up") == [] and [p.event_id for p in store.parked] == [other.id]


# ---- an imported history ------------------------------------------------------------------------


async def test_an_imported_history_is_recorded_but_never_announced() -> None:
    store = InMemoryStore()
    await handle(on_member_enrolled, event(enrolled(sms=True), chain_id=CHAIN, imported=True), unit(store))
    assert store.contact("m1") is not None  # known, so later live events reach the member
    assert store.queued("m1") == []
    await handle(on_tier_changed, event(tier_changed(), member_id="m1", chain_id=CHAIN, imported=True), unit(store))
    assert store.queued("m1") == []
    # the member's first live event after the import is announced as usual
    await handle(on_tier_changed, event(tier_changed(to_tier="gold"), member_id="m1", chain_id=CHAIN), unit(store))
    assert [n.kind for n in store.queued("m1")] == ["tier_up", "tier_up"]


# ---- events naming another chain's member (forged or misrouted) ---------------------------------


def _forged_events() -> list[tuple[Any, CloudEvent[Any]]]:
    forger = "chain-forger"
    return [
        (on_member_enrolled, event(enrolled("m1", marketing=True), chain_id=forger)),
        (on_tier_changed, event(tier_changed("up"), member_id="m1", chain_id=forger)),
        (on_benefit_granted, event(birthday_voucher(), member_id="m1", chain_id=forger)),
        (
            on_points_expiring,
            event(
                PointsExpiringSoon(points=10, expires_on=date(2025, 7, 1), lot_id="l-1"),
                member_id="m1",
                chain_id=forger,
            ),
        ),
        (
            on_referral_completed,
            event(
                ReferralCompleted(
                    referrer_id="m1", referee_id="m9", purchase_id="p", completed_at=EVENING, referral_count=1
                ),
                member_id="m9",
                chain_id=forger,
            ),
        ),
    ]


@pytest.mark.parametrize("index", range(5), ids=["enrolment", "tier", "voucher", "expiring", "referral"])
async def test_an_event_naming_a_member_of_another_chain_is_refused_not_parked_and_changes_nothing(index: int) -> None:
    store = known("m1", EVERYTHING)  # m1 is chain-1's
    handler, forged = _forged_events()[index]
    before = (dict(store.contacts), dict(store.preferences))

    with pytest.raises(MemberOfAnotherChain) as refused:
        await handle(handler, forged, unit(store))

    assert (dict(store.contacts), dict(store.preferences)) == before
    assert store.notifications == [] and store.parked == []
    assert CHAIN not in str(refused.value) and "13812345678" not in str(refused.value)

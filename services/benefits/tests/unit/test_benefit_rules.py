"""The benefit rules (benefits.domain): what tier changes grant and revoke, referral rewards, redemption."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from benefits import domain
from benefits.commands import benefits_snapshot
from benefits.domain import Entitlement, Grant
from shared.policy import DEFAULT_POLICY

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TIERS = [t.code for t in DEFAULT_POLICY.tiers]


def held(grant: Grant, status: domain.Status = "active") -> Entitlement:
    return Entitlement(
        benefit_id=str(uuid.uuid4()),
        code=grant.code,
        kind=grant.kind,
        tier=grant.tier,
        status=status,
        valid_from=grant.valid_from,
        valid_until=grant.valid_until,
        remaining_uses=grant.remaining_uses,
        value_fen=grant.value_fen,
        percent=grant.percent,
    )


def apply(entitlements: list[Entitlement], changes: domain.BenefitChanges) -> list[Entitlement]:
    """What the handler does with a diff, in memory."""
    gone = {e.benefit_id: s for s, es in (("expired", changes.expire), ("revoked", changes.revoke)) for e in es}
    after = [replace(e, status=gone[e.benefit_id]) if e.benefit_id in gone else e for e in entitlements]
    return after + [held(g) for g in changes.grant]


def holding(tier: str, at: datetime = T0) -> list[Entitlement]:
    return apply([], domain.tier_benefit_changes(DEFAULT_POLICY, tier, [], at))


def codes(items: list[Entitlement] | list[Grant]) -> set[str]:
    return {i.code for i in items}


def voucher(code: str = "referral_voucher") -> Entitlement:
    return held(
        domain.referrer_reward(DEFAULT_POLICY, 1, T0)
        if code == "referral_voucher"
        else Grant(
            code=code,
            kind="voucher",
            tier="gold",
            valid_from=T0,
            valid_until=T0 + timedelta(days=31),
            remaining_uses=1,
            value_fen=100_000,
        )
    )


def test_a_new_member_gets_the_lowest_tiers_tier_benefits_only() -> None:
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "member", [], T0)
    assert codes(changes.grant) == {"discount_percent", "priority_booking"}  # birthday_voucher has its own trigger
    assert changes.revoke == [] and changes.expire == []
    by_code = {g.code: g for g in changes.grant}
    assert by_code["discount_percent"].percent == 100
    assert by_code["priority_booking"].valid_until is None and by_code["priority_booking"].remaining_uses is None


def test_member_to_silver_grants_the_skin_check_and_keeps_priority_booking_without_a_second_grant() -> None:
    before = holding("member")
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "silver", before, T0 + timedelta(days=10))
    assert codes(changes.grant) == {"annual_skin_check", "discount_percent"}
    assert "priority_booking" not in codes(changes.grant)
    skin = next(g for g in changes.grant if g.code == "annual_skin_check")
    assert skin.tier == "silver" and skin.remaining_uses == 1
    assert skin.valid_until == T0 + timedelta(days=10 + 365)


def test_a_changed_discount_replaces_the_old_one() -> None:
    before = holding("member")
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "silver", before, T0)
    assert [e.code for e in changes.revoke] == ["discount_percent"]
    assert next(g for g in changes.grant if g.code == "discount_percent").percent == 95


def test_gold_to_silver_revokes_the_doctor_and_the_care_pack_and_keeps_vouchers() -> None:
    care_pack = held(
        Grant(
            code="care_pack",
            kind="entitlement",
            tier="gold",
            valid_from=T0,
            valid_until=T0 + timedelta(days=90),
            remaining_uses=1,
        )
    )
    before = [*holding("gold"), care_pack, voucher(), voucher("birthday_voucher")]
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "silver", before, T0 + timedelta(days=30))
    assert codes(changes.revoke) == {"dedicated_doctor", "care_pack", "discount_percent"}
    assert codes(changes.grant) == {"discount_percent"}  # the skin check and priority booking are kept
    assert not {"referral_voucher", "birthday_voucher"} & codes(changes.revoke)


def test_diamond_to_gold_revokes_the_private_plan_and_24h_response() -> None:
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "gold", holding("diamond"), T0)
    assert codes(changes.revoke) == {"private_plan", "24h_response", "discount_percent"}
    assert codes(changes.grant) == {"discount_percent"}


def test_a_skin_check_used_this_tier_year_is_not_granted_again_by_an_upgrade() -> None:
    silver = [
        replace(e, status="used", remaining_uses=0) if e.code == "annual_skin_check" else e for e in holding("silver")
    ]
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "gold", silver, T0 + timedelta(days=100))
    assert "annual_skin_check" not in codes(changes.grant)
    a_year_later = domain.tier_benefit_changes(DEFAULT_POLICY, "silver", silver, T0 + timedelta(days=366))
    assert "annual_skin_check" in codes(a_year_later.grant)


def test_an_expired_benefit_is_marked_expired_and_granted_anew_at_the_same_tier() -> None:
    silver = holding("silver")
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "silver", silver, T0 + timedelta(days=365))
    assert codes(changes.expire) == {"annual_skin_check"}
    assert codes(changes.grant) == {"annual_skin_check"} and changes.revoke == []


def test_the_third_referral_earns_the_milestone_voucher() -> None:
    values = [domain.referrer_reward(DEFAULT_POLICY, n, T0).value_fen for n in (1, 2, 3, 4)]
    assert values == [50_000, 50_000, 100_000, 50_000]
    reward = domain.referrer_reward(DEFAULT_POLICY, 3, T0)
    assert (reward.code, reward.kind, reward.tier, reward.remaining_uses) == ("referral_voucher", "voucher", None, 1)
    assert reward.valid_until == T0 + timedelta(days=365)


def test_the_referee_gets_a_welcome_skin_check_that_no_downgrade_revokes() -> None:
    welcome = held(domain.referee_reward(DEFAULT_POLICY, T0))
    assert (welcome.code, welcome.remaining_uses, welcome.tier) == ("welcome_skin_check", 1, None)
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "member", [*holding("diamond"), welcome], T0)
    assert welcome not in changes.revoke


def test_a_benefit_can_be_redeemed_until_it_is_used_up_expired_or_revoked() -> None:
    skin = next(e for e in holding("silver") if e.code == "annual_skin_check")
    now = T0 + timedelta(days=1)
    assert domain.can_redeem(skin, now)
    remaining, status = domain.after_redemption(skin)
    assert (remaining, status) == (0, "used")
    assert domain.redemption_refusal(replace(skin, remaining_uses=0, status="used"), now) == "This benefit is used up."
    assert not domain.can_redeem(replace(skin, status="revoked"), now)
    assert not domain.can_redeem(skin, T0 + timedelta(days=365))
    assert domain.effective_status(skin, T0 + timedelta(days=365)) == "expired"


def test_an_unlimited_benefit_can_be_redeemed_again_and_again() -> None:
    booking = next(e for e in holding("member") if e.code == "priority_booking")
    for _ in range(3):
        remaining, status = domain.after_redemption(booking)
        assert (remaining, status) == (None, "active")
        assert domain.can_redeem(replace(booking, remaining_uses=remaining, status=status), T0 + timedelta(days=900))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TIERS), min_size=1, max_size=8), st.lists(st.integers(0, 400), min_size=8, max_size=8))
def test_after_any_tier_changes_the_active_tier_benefits_are_exactly_the_tiers_once_each(
    path: list[str], gaps: list[int]
) -> None:
    entitlements: list[Entitlement] = [voucher()]
    at = T0
    for tier, gap in zip(path, gaps, strict=False):
        at += timedelta(days=gap)
        entitlements = apply(entitlements, domain.tier_benefit_changes(DEFAULT_POLICY, tier, entitlements, at))
        active_tier_bound = [e for e in entitlements if e.tier is not None and e.status == "active"]
        assert sorted(e.code for e in active_tier_bound) == sorted(
            r.code for r in domain.tier_grant_rules(DEFAULT_POLICY, tier)
        )
        assert all(domain.effective_status(e, at) == "active" for e in active_tier_bound)
        assert all(e.status != "revoked" for e in entitlements if e.code == "referral_voucher")
    # applying the same change twice grants nothing more
    again = domain.tier_benefit_changes(DEFAULT_POLICY, path[-1], entitlements, at)
    assert again == domain.BenefitChanges()


# ---- what a rebuild's snapshot carries -----------------------------------------------------------


def test_the_status_view_shows_granted_and_used_up_benefits_until_they_end_and_never_ended_ones() -> None:
    now = T0 + timedelta(days=10)

    def entitlement(status: domain.Status, until: datetime | None, uses: int | None = 1) -> Entitlement:
        return Entitlement(
            benefit_id=str(uuid.uuid4()),
            code="care_pack",
            kind="entitlement",
            tier="gold",
            status=status,
            valid_from=T0,
            valid_until=until,
            remaining_uses=uses,
        )

    later, earlier = now + timedelta(days=1), now - timedelta(seconds=1)
    shown = {
        "active": domain.in_status_view(entitlement("active", later), now),
        "active while the tier is held": domain.in_status_view(entitlement("active", None), now),
        "used up": domain.in_status_view(entitlement("used", later, uses=0), now),
        "active past its end": domain.in_status_view(entitlement("active", earlier), now),
        "ends right now": domain.in_status_view(entitlement("active", now), now),
        "used up past its end": domain.in_status_view(entitlement("used", earlier, uses=0), now),
        "revoked": domain.in_status_view(entitlement("revoked", None), now),
        "expired": domain.in_status_view(entitlement("expired", later), now),
    }
    assert shown == {
        "active": True,
        "active while the tier is held": True,
        "used up": True,
        "active past its end": False,
        "ends right now": False,
        "used up past its end": False,
        "revoked": False,
        "expired": False,
    }


def test_a_snapshot_lists_what_the_view_shows_as_the_events_about_it_would_oldest_first() -> None:
    now = T0 + timedelta(days=10)
    grants = domain.tier_benefit_changes(DEFAULT_POLICY, "gold", [], T0, tier_year="2025-01-01").grant
    entitlements = [held(g) for g in grants]
    revoked = replace(entitlements[0], status="revoked")
    snapshot = benefits_snapshot([revoked, *entitlements[1:]], now)
    assert [(b.benefit_id, b.code, b.remaining_uses, b.valid_until) for b in snapshot.benefits] == [
        (e.benefit_id, e.code, e.remaining_uses, e.valid_until)
        for e in entitlements[1:]
        if domain.in_status_view(e, now)
    ]
    assert snapshot.benefits  # gold grants something

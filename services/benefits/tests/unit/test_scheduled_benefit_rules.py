"""The scheduled benefit rules (benefits.domain): birthday vouchers, tier-years, care packs."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from benefits import domain
from benefits.domain import Entitlement, Grant
from shared.policy import DEFAULT_POLICY

SHANGHAI = ZoneInfo("Asia/Shanghai")
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
        period=grant.period,
    )


def birthday(born: date, as_of: datetime, tier: str = "member") -> Grant | None:
    return domain.birthday_grant(DEFAULT_POLICY, tier=tier, birthday=born, as_of=as_of, tz=SHANGHAI)


# ---- birthday vouchers --------------------------------------------------------------------------


def test_half_past_four_utc_on_the_last_of_february_is_already_march_in_shanghai() -> None:
    as_of = datetime(2027, 2, 28, 16, 30, tzinfo=UTC)  # 2027-03-01 00:30 local
    march = birthday(date(1990, 3, 9), as_of)
    assert march is not None and march.period == "2027"
    # on time (the first local day of March): valid to the end of March, local midnight = 16:00 UTC
    assert march.valid_until == datetime(2027, 3, 31, 16, 0, tzinfo=UTC)
    assert march.valid_from == as_of


def test_half_past_three_utc_on_the_last_of_february_is_still_february_in_shanghai() -> None:
    as_of = datetime(2027, 2, 28, 15, 30, tzinfo=UTC)  # 2027-02-28 23:30 local
    windows = domain.birthday_windows(as_of, SHANGHAI)
    assert [(w.birth_month, w.period) for w in windows] == [(2, "2027"), (1, "2027")]
    assert birthday(date(1990, 3, 9), as_of) is None


def test_a_29_february_birthday_gets_its_voucher_in_february_of_a_non_leap_year() -> None:
    leapling = date(1992, 2, 29)
    on_time = birthday(leapling, datetime(2027, 1, 31, 16, 1, tzinfo=UTC))  # 2027-02-01 00:01 local
    assert on_time is not None and on_time.period == "2027"
    assert on_time.valid_until == datetime(2027, 2, 28, 16, 0, tzinfo=UTC)  # the end of 28 February, local
    assert birthday(leapling, datetime(2027, 1, 31, 15, 59, tzinfo=UTC)) is None  # still January locally


def test_the_voucher_is_worth_the_policys_birthday_amount_and_is_a_voucher_no_downgrade_revokes() -> None:
    policy = DEFAULT_POLICY.model_copy(update={"birthday_voucher_fen": 88_800})
    voucher = domain.birthday_grant(
        policy, tier="gold", birthday=date(1990, 6, 15), as_of=datetime(2027, 6, 1, tzinfo=UTC), tz=SHANGHAI
    )
    assert voucher is not None
    assert (voucher.code, voucher.kind, voucher.tier, voucher.remaining_uses, voucher.value_fen) == (
        "birthday_voucher",
        "voucher",
        None,
        1,
        88_800,
    )
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "member", [held(voucher)], voucher.valid_from)
    assert changes.revoke == []


def test_a_late_grant_in_the_birth_month_is_valid_at_least_31_days() -> None:
    as_of = datetime(2027, 3, 25, 2, 0, tzinfo=UTC)  # after downtime, late in the birth month
    late = birthday(date(1990, 3, 9), as_of)
    assert late is not None and late.period == "2027"
    assert late.valid_until == as_of + timedelta(days=31)


def test_a_grant_on_the_second_day_gets_the_longer_of_month_end_and_31_days() -> None:
    as_of = datetime(2027, 3, 1, 16, 0, tzinfo=UTC)  # 2027-03-02 00:00 local: late, but March is long
    late = birthday(date(1990, 3, 9), as_of)
    assert late is not None
    assert late.valid_until == as_of + timedelta(days=31)  # 2 April 00:00 local, after the end of March
    assert late.valid_until > datetime(2027, 3, 31, 16, 0, tzinfo=UTC)


def test_a_catch_up_in_the_following_month_is_for_the_birth_months_year_and_valid_31_days() -> None:
    as_of = datetime(2027, 4, 20, 4, 0, tzinfo=UTC)
    catch_up = birthday(date(1990, 3, 9), as_of)
    assert catch_up is not None and catch_up.period == "2027"
    assert catch_up.valid_until == as_of + timedelta(days=31)


def test_a_december_birthday_is_caught_up_in_january_for_last_year() -> None:
    catch_up = birthday(date(1985, 12, 24), datetime(2028, 1, 3, tzinfo=UTC))
    assert catch_up is not None and catch_up.period == "2027"


def test_two_months_after_the_birth_month_the_voucher_is_missed() -> None:
    assert birthday(date(1990, 3, 9), datetime(2027, 5, 1, tzinfo=UTC)) is None
    assert birthday(date(1990, 3, 9), datetime(2027, 2, 10, tzinfo=UTC)) is None  # not yet


def test_a_tier_whose_policy_has_no_birthday_rule_gets_no_voucher() -> None:
    benefits = {
        **DEFAULT_POLICY.benefits,
        "member": [r for r in DEFAULT_POLICY.benefits["member"] if r.trigger != "birthday"],
    }
    policy = DEFAULT_POLICY.model_copy(update={"benefits": benefits})
    args = dict(birthday=date(1990, 6, 15), as_of=datetime(2027, 6, 1, tzinfo=UTC), tz=SHANGHAI)
    assert domain.birthday_grant(policy, tier="member", **args) is None  # type: ignore[arg-type]
    assert domain.birthday_grant(policy, tier="silver", **args) is not None  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.dates(date(1940, 1, 1), date(2010, 12, 31)),
    st.datetimes(datetime(2025, 1, 1), datetime(2035, 12, 31), timezones=st.just(UTC)),
)
def test_a_voucher_is_only_granted_in_or_just_after_the_local_birth_month_and_lasts_past_it(
    born: date, as_of: datetime
) -> None:
    grant = birthday(born, as_of)
    local = as_of.astimezone(SHANGHAI)
    months_after = (local.month - born.month) % 12
    assert (grant is not None) == (months_after in (0, 1))
    if grant is None:
        return
    assert grant.period == str(local.year if local.month >= born.month else local.year - 1)
    window = domain.birthday_window(int(grant.period), born.month, SHANGHAI)
    assert grant.valid_until is not None and grant.valid_until >= window.month_end
    assert grant.valid_until > as_of
    assert grant.valid_until - as_of >= timedelta(days=31) or as_of < window.month_start + timedelta(days=1)


# ---- tier-years ---------------------------------------------------------------------------------


T0 = datetime(2026, 3, 15, 2, 0, tzinfo=UTC)


def silver_since(at: datetime) -> list[Entitlement]:
    changes = domain.tier_benefit_changes(
        DEFAULT_POLICY, "silver", [], at, tier_year=domain.tier_year_period(at, SHANGHAI)
    )
    return [held(g) for g in changes.grant]


def test_attaining_silver_grants_a_skin_check_keyed_by_the_tier_years_first_local_day() -> None:
    skin = next(e for e in silver_since(datetime(2026, 3, 14, 17, 0, tzinfo=UTC)) if e.code == "annual_skin_check")
    assert skin.period == "2026-03-15"  # 01:00 on 15 March in Shanghai
    assert next(e for e in silver_since(T0) if e.code == "priority_booking").period is None


def test_a_review_that_keeps_the_tier_replaces_the_unused_skin_check_with_the_next_years() -> None:
    before = silver_since(T0)
    review = T0 + timedelta(days=300)
    year = domain.tier_year_period(review, SHANGHAI)
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "silver", before, review, tier_year=year, new_tier_year=True)
    assert [e.code for e in changes.replace] == ["annual_skin_check"]
    assert [(g.code, g.period, g.remaining_uses) for g in changes.grant] == [("annual_skin_check", year, 1)]
    assert changes.revoke == [] and changes.expire == []


def test_a_review_after_the_skin_check_was_used_grants_the_next_years_and_replaces_nothing() -> None:
    before = [
        e if e.code != "annual_skin_check" else Entitlement(**{**e.__dict__, "status": "used", "remaining_uses": 0})
        for e in silver_since(T0)
    ]
    review = T0 + timedelta(days=200)
    changes = domain.tier_benefit_changes(
        DEFAULT_POLICY, "gold", before, review, new_tier_year=True, tier_year=domain.tier_year_period(review, SHANGHAI)
    )
    assert changes.replace == []
    assert "annual_skin_check" in {g.code for g in changes.grant}


def test_the_same_review_applied_twice_grants_one_skin_check() -> None:
    review = T0 + timedelta(days=365)
    year = domain.tier_year_period(review, SHANGHAI)
    first = domain.tier_benefit_changes(
        DEFAULT_POLICY, "silver", silver_since(T0), review, tier_year=year, new_tier_year=True
    )
    after = [e for e in silver_since(T0) if e.code != "annual_skin_check"] + [held(g) for g in first.grant]
    again = domain.tier_benefit_changes(
        DEFAULT_POLICY, "silver", after, review + timedelta(hours=1), tier_year=year, new_tier_year=True
    )
    assert again == domain.BenefitChanges()


def test_an_upgrade_within_the_tier_year_keeps_the_skin_check() -> None:
    later = T0 + timedelta(days=40)
    changes = domain.tier_benefit_changes(
        DEFAULT_POLICY, "gold", silver_since(T0), later, tier_year=domain.tier_year_period(later, SHANGHAI)
    )
    assert "annual_skin_check" not in {g.code for g in changes.grant} and changes.replace == []


# ---- care packs ---------------------------------------------------------------------------------


def care_packs(tier: str, amount_fen: int) -> list[Grant]:
    return domain.purchase_grants(DEFAULT_POLICY, tier=tier, purchase_id="p-1", amount_fen=amount_fen, occurred_at=T0)


def test_a_gold_members_5000_yuan_purchase_earns_one_care_pack_for_that_purchase() -> None:
    [pack] = care_packs("gold", 500_000)
    assert (pack.code, pack.tier, pack.remaining_uses, pack.period) == ("care_pack", "gold", 1, "p-1")
    assert pack.valid_from == T0 and pack.valid_until == T0 + timedelta(days=90)


def test_a_4999_yuan_purchase_or_a_silver_member_earns_no_care_pack() -> None:
    assert care_packs("gold", 499_900) == []
    assert care_packs("silver", 10_000_000) == []
    assert care_packs("member", 500_000) == []
    assert [g.code for g in care_packs("diamond", 500_000)] == ["care_pack"]


def test_the_care_pack_threshold_follows_the_policy() -> None:
    policy = DEFAULT_POLICY.model_copy(update={"care_pack_min_purchase_fen": 100_000})
    assert len(domain.purchase_grants(policy, tier="gold", purchase_id="p", amount_fen=100_000, occurred_at=T0)) == 1


@given(st.sampled_from(TIERS), st.integers(1, 50_000_000))
def test_a_care_pack_needs_both_the_amount_and_a_tier_that_has_it(tier: str, amount_fen: int) -> None:
    has_it = any(r.code == "care_pack" for r in DEFAULT_POLICY.benefits_of(tier))
    expected = 1 if has_it and amount_fen >= DEFAULT_POLICY.care_pack_min_purchase_fen else 0
    assert len(care_packs(tier, amount_fen)) == expected


def test_a_downgrade_to_silver_revokes_an_unused_care_pack() -> None:
    [pack] = care_packs("gold", 600_000)
    changes = domain.tier_benefit_changes(DEFAULT_POLICY, "silver", [held(pack)], T0 + timedelta(days=1))
    assert [e.code for e in changes.revoke] == ["care_pack"]

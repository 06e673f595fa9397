"""Templates render for every kind in both locales, with exactly the values the handlers supply."""

from __future__ import annotations

import string

import pytest

from notify import templates
from notify.domain import KINDS, LOCALES

SAMPLE = {
    "name": "王女士",
    "member_no": "M000000042",
    "tier_name": "银卡会员",
    "benefit_name": "生日礼券",
    "code": "birthday_voucher",
    "points": 1200,
    "expires_on": "2026-03-31",
    "referral_count": 3,
    "voucher": "1000元生日礼券",
    "validity": "有效期至2026-06-30",
}


def _placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_renders_in_every_locale_with_its_values(kind: str, locale: str) -> None:
    values = {k: SAMPLE[k] for k in templates.PLACEHOLDERS[kind]}
    title, body = templates.render(kind, locale, values)
    assert title and body
    assert "{" not in title + body and "}" not in title + body
    assert str(values["name"]) in body


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_templates_use_only_the_declared_placeholders(kind: str) -> None:
    for locale, template in templates.TEMPLATES[kind].items():
        used = _placeholders(template["title"]) | _placeholders(template["body"])
        assert used <= set(templates.PLACEHOLDERS[kind]), (kind, locale, used)


def test_every_kind_has_a_template_in_both_locales() -> None:
    assert set(templates.TEMPLATES) == set(KINDS)
    assert all(set(by_locale) == set(LOCALES) for by_locale in templates.TEMPLATES.values())


def test_tier_up_names_the_tier_in_the_members_language() -> None:
    zh_title, _ = templates.render(
        "tier_up", "zh-CN", {"name": "王", "tier_name": templates.tier_name("silver", "zh-CN")}
    )
    en_title, en_body = templates.render(
        "tier_up", "en", {"name": "Wang", "tier_name": templates.tier_name("silver", "en")}
    )
    assert "银卡会员" in zh_title
    assert en_title == "You are now Silver" and "upgraded to Silver" in en_body


def test_points_expiring_states_points_and_date() -> None:
    _, body = templates.render("points_expiring", "en", {"name": "Li", "points": 800, "expires_on": "2026-01-31"})
    assert "800" in body and "2026-01-31" in body


def test_an_unknown_locale_falls_back_to_chinese() -> None:
    assert templates.render("welcome", "fr", {"name": "x", "member_no": "M1"}) == templates.render(
        "welcome", "zh-CN", {"name": "x", "member_no": "M1"}
    )


def test_a_chains_own_tier_keeps_the_policy_name_and_an_unknown_benefit_shows_its_code() -> None:
    assert templates.tier_name("platinum", "en", "铂金会员") == "铂金会员"
    assert templates.tier_name("platinum", "en") == "platinum"
    assert templates.benefit_name("mystery_gift", "zh-CN") == "mystery_gift"


def test_a_member_without_a_name_is_greeted_politely() -> None:
    assert templates.member_name(None, "zh-CN") == "尊敬的会员"
    assert templates.member_name("", "en") == "Member"
    assert templates.member_name("Zhao", "en") == "Zhao"

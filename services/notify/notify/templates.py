"""Message templates as data: per kind, per locale, a title and a body in ``str.format`` syntax.

Placeholders each kind may use (the handler supplies them, see :data:`PLACEHOLDERS`):
``{name}`` the member's name, ``{tier_name}`` a tier's display name, ``{benefit_name}``/``{code}``
a benefit, ``{points}``/``{expires_on}`` expiring points, ``{referral_count}`` completed referrals,
``{voucher}`` a voucher with its face value ("1000元生日礼券", "1,000-yuan birthday voucher") and
``{validity}`` its last valid day ("有效期至2025-06-30", "valid until 2025-06-30").
Display names of tiers and benefits are data too, per locale; an unknown code shows as itself.

``voucher_granted`` is the one *marketing* kind (a voucher is an offer: it needs the marketing
consent and waits out quiet hours); every other kind is transactional. See :mod:`notify.domain`.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from .domain import DEFAULT_LOCALE

TEMPLATES: dict[str, dict[str, dict[str, str]]] = {
    "welcome": {
        "zh-CN": {
            "title": "欢迎加入会员计划",
            "body": "{name}，您好！欢迎成为我们的会员，会员号 {member_no}。消费即可累积积分，享受会员专属权益。",
        },
        "en": {
            "title": "Welcome to the membership programme",
            "body": "Hello {name}, welcome! Your member number is {member_no}. "
            "Earn points with every visit and enjoy member benefits.",
        },
    },
    "tier_up": {
        "zh-CN": {
            "title": "恭喜升级为{tier_name}",
            "body": "{name}，恭喜您升级为{tier_name}！更多专属权益已为您开通。",
        },
        "en": {
            "title": "You are now {tier_name}",
            "body": "Congratulations {name}, you have been upgraded to {tier_name}. Your new benefits are ready.",
        },
    },
    "tier_down": {
        "zh-CN": {
            "title": "会员等级调整为{tier_name}",
            "body": "{name}，根据近一年的消费与积分，您的会员等级已调整为{tier_name}。继续消费即可重新升级。",
        },
        "en": {
            "title": "Your tier is now {tier_name}",
            "body": "{name}, following your annual review your tier is now {tier_name}. "
            "Keep visiting to move up again.",
        },
    },
    "benefit_granted": {
        "zh-CN": {
            "title": "您获得了新权益：{benefit_name}",
            "body": "{name}，{benefit_name}（{code}）已发放到您的账户，欢迎到店使用。",
        },
        "en": {
            "title": "New benefit: {benefit_name}",
            "body": "{name}, {benefit_name} ({code}) has been added to your account.",
        },
    },
    # marketing: see the module docstring
    "voucher_granted": {
        "zh-CN": {"title": "您有一张礼券待使用", "body": "{name}，您的{voucher}已到账，{validity}，欢迎到店使用。"},
        "en": {
            "title": "A voucher is waiting for you",
            "body": "{name}, your {voucher} is waiting for you, {validity}.",
        },
    },
    "points_expiring": {
        "zh-CN": {
            "title": "{points} 积分即将过期",
            "body": "{name}，您有 {points} 积分将于 {expires_on} 过期，请及时使用。",
        },
        "en": {
            "title": "{points} points expire soon",
            "body": "{name}, {points} of your points expire on {expires_on}. Redeem them before then.",
        },
    },
    "referral_completed": {
        "zh-CN": {
            "title": "推荐成功",
            "body": "{name}，您推荐的好友已完成首次消费，推荐奖励已发放。您已成功推荐 {referral_count} 位好友。",
        },
        "en": {
            "title": "Referral completed",
            "body": "{name}, your friend has made their first purchase and your referral reward is on its way. "
            "Completed referrals: {referral_count}.",
        },
    },
}

#: the values each kind's templates may use (a unit test renders every kind with exactly these)
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "welcome": ("name", "member_no"),
    "tier_up": ("name", "tier_name"),
    "tier_down": ("name", "tier_name"),
    "benefit_granted": ("name", "benefit_name", "code"),
    "voucher_granted": ("name", "voucher", "validity"),
    "points_expiring": ("name", "points", "expires_on"),
    "referral_completed": ("name", "referral_count"),
}

TIER_NAMES: dict[str, dict[str, str]] = {
    "zh-CN": {"member": "普通会员", "silver": "银卡会员", "gold": "金卡会员", "diamond": "钻石会员"},
    "en": {"member": "Member", "silver": "Silver", "gold": "Gold", "diamond": "Diamond"},
}

BENEFIT_NAMES: dict[str, dict[str, str]] = {
    "zh-CN": {
        "discount_percent": "会员折扣",
        "priority_booking": "优先预约",
        "birthday_voucher": "生日礼券",
        "annual_skin_check": "年度皮肤检测",
        "dedicated_doctor": "专属医生",
        "care_pack": "术后护理包",
        "private_plan": "私人定制方案",
        "24h_response": "24小时响应",
        "welcome_skin_check": "新人皮肤检测",
        "referral_voucher": "推荐礼券",
    },
    "en": {
        "discount_percent": "member discount",
        "priority_booking": "priority booking",
        "birthday_voucher": "birthday voucher",
        "annual_skin_check": "annual skin check",
        "dedicated_doctor": "a dedicated doctor",
        "care_pack": "an aftercare pack",
        "private_plan": "a private plan",
        "24h_response": "24-hour response",
        "welcome_skin_check": "a welcome skin check",
        "referral_voucher": "a referral voucher",
    },
}

#: vouchers' names inside a sentence (no article: "your 1,000-yuan birthday voucher")
VOUCHER_NAMES: dict[str, dict[str, str]] = {
    "zh-CN": {"birthday_voucher": "生日礼券", "referral_voucher": "推荐礼券"},
    "en": {"birthday_voucher": "birthday voucher", "referral_voucher": "referral voucher"},
}

DEFAULT_NAME = {"zh-CN": "尊敬的会员", "en": "Member"}


def tier_name(code: str, locale: str, fallback: str | None = None) -> str:
    """A tier's display name; a chain's own tier (not in the table) keeps the policy's name."""
    return TIER_NAMES.get(locale, {}).get(code) or fallback or code


def benefit_name(code: str, locale: str) -> str:
    return BENEFIT_NAMES.get(locale, {}).get(code, code)


def yuan(fen: int, locale: str) -> str:
    """A face value in yuan: whole yuan without decimals; thousands grouped in English."""
    whole, cents = divmod(fen, 100)
    amount = f"{whole:,}" if locale == "en" else str(whole)
    return amount if cents == 0 else f"{amount}.{cents:02d}"


def voucher(code: str, value_fen: int | None, locale: str) -> str:
    """ "1000元生日礼券" / "1,000-yuan birthday voucher"; without a face value just the name."""
    name = VOUCHER_NAMES.get(locale, {}).get(code) or benefit_name(code, locale)
    if value_fen is None:
        return name
    amount = yuan(value_fen, locale)
    return f"{amount}-yuan {name}" if locale == "en" else f"{amount}元{name}"


def validity(last_day: date | None, locale: str) -> str:
    """The last local day a voucher can be used, or that it does not expire."""
    if locale == "en":
        return f"valid until {last_day.isoformat()}" if last_day else "with no end date"
    return f"有效期至{last_day.isoformat()}" if last_day else "长期有效"


def member_name(name: str | None, locale: str) -> str:
    return name or DEFAULT_NAME.get(locale, DEFAULT_NAME[DEFAULT_LOCALE])


def render(kind: str, locale: str, values: dict[str, Any]) -> tuple[str, str]:
    """(title, body) of ``kind`` in ``locale`` (unknown locales fall back to zh-CN).

    A missing placeholder is a programming error (KeyError), caught by the unit tests.
    """
    by_locale = TEMPLATES[kind]
    template = by_locale.get(locale) or by_locale[DEFAULT_LOCALE]
    return template["title"].format(**values), template["body"].format(**values)

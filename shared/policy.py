"""The membership programme as data (SPEC §4): tiers, thresholds, earning, benefits.

Tiering owns the versioned policy per chain (``GET/PUT /v1/policy``); every
service that applies a rule reads it from a :class:`Policy` document, never
from constants in code. :data:`DEFAULT_POLICY` is the chain's starting policy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierRule(_Doc):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]{0,30}$")
    name: str = Field(min_length=1, max_length=40)
    spend_fen: int = Field(ge=0)  # trailing-window spend that qualifies
    points: int = Field(ge=0)  # trailing-window qualifying points that qualify


class Earning(_Doc):
    points_per_yuan: int = Field(1, ge=0, le=1000)
    new_member_multiplier: int = Field(2, ge=1, le=100)
    new_member_days: int = Field(30, ge=0, le=3650)
    behaviour_points: dict[str, int] = {"lecture": 200, "survey": 50, "skin_test": 100}
    behaviour_monthly_cap: int = Field(2000, ge=0)
    referral_points: int = Field(500, ge=0)


BenefitKind = Literal["discount", "entitlement", "voucher"]


class BenefitRule(_Doc):
    code: str
    kind: BenefitKind = "entitlement"
    # discount: percent of price paid; voucher: face value in fen
    percent: int | None = Field(None, ge=1, le=100)
    value_fen: int | None = Field(None, ge=0)
    uses: int | None = Field(None, ge=1)  # None: unlimited while the tier is held
    valid_days: int | None = Field(None, ge=1)  # None: while the tier is held
    # when it is granted: with the tier, in the birth month, or per qualifying purchase
    trigger: Literal["tier", "birthday", "purchase"] = "tier"


class Referral(_Doc):
    min_purchase_fen: int = Field(100_000, ge=0)
    referrer_points: int = Field(500, ge=0)
    voucher_fen: int = Field(50_000, ge=0)
    milestone_count: int = Field(3, ge=1)
    milestone_voucher_fen: int = Field(100_000, ge=0)
    referee_benefit: str = "welcome_skin_check"


KNOWN_BENEFITS = {
    "discount_percent",
    "priority_booking",
    "birthday_voucher",
    "annual_skin_check",
    "dedicated_doctor",
    "care_pack",
    "private_plan",
    "24h_response",
    "welcome_skin_check",
    "referral_voucher",
}


class Policy(_Doc):
    version: int = 1
    tiers: list[TierRule] = Field(min_length=1)
    qualification_window_days: int = Field(365, ge=1, le=3650)
    earning: Earning = Earning()
    pending_days: int = Field(7, ge=0, le=365)
    expiry_months: int = Field(24, ge=1, le=240)
    expiring_notice_days: int = Field(30, ge=0, le=365)
    redemption_points_per_yuan: int = Field(100, ge=1)
    review_months: int = Field(12, ge=1, le=120)
    downgrade_max_steps: int = Field(1, ge=1, le=10)
    care_pack_min_purchase_fen: int = Field(500_000, ge=0)
    birthday_voucher_fen: int = Field(100_000, ge=0)
    #: a single purchase above this is implausible (a typo, a test, an attack) and refused with 422;
    #: 10 million yuan by default, per chain and versioned like every rule (docs/decisions/0023)
    max_purchase_fen: int = Field(1_000_000_000, ge=1, le=10**12)
    referral: Referral = Referral()
    benefits: dict[str, list[BenefitRule]]

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        codes = [t.code for t in self.tiers]
        if len(set(codes)) != len(codes):
            raise ValueError("tier codes must be unique")
        if self.tiers[0].spend_fen != 0 or self.tiers[0].points != 0:
            raise ValueError("the lowest tier must have zero thresholds")
        for lower, higher in zip(self.tiers, self.tiers[1:], strict=False):
            if not (higher.spend_fen > lower.spend_fen and higher.points > lower.points):
                raise ValueError(f"thresholds must increase: {higher.code} must be above {lower.code}")
        unknown_tiers = set(self.benefits) - set(codes)
        if unknown_tiers:
            raise ValueError(f"benefits name unknown tiers {sorted(unknown_tiers)}")
        for tier, rules in self.benefits.items():
            for rule in rules:
                if rule.code not in KNOWN_BENEFITS:
                    raise ValueError(f"unknown benefit code {rule.code!r} in tier {tier}")
                if rule.kind == "discount" and rule.percent is None:
                    raise ValueError(f"discount benefit {rule.code} in {tier} needs a percent")
        return self

    def tier(self, code: str) -> TierRule:
        for t in self.tiers:
            if t.code == code:
                return t
        raise KeyError(code)

    def rank(self, code: str) -> int:
        return [t.code for t in self.tiers].index(code)

    def benefits_of(self, tier: str) -> list[BenefitRule]:
        return list(self.benefits.get(tier, []))

    def discount_percent(self, tier: str) -> int:
        for rule in self.benefits_of(tier):
            if rule.kind == "discount" and rule.percent is not None:
                return rule.percent
        return 100


def _b(code: str, **kw: object) -> BenefitRule:
    return BenefitRule.model_validate({"code": code, **kw})


def _tier_benefits(percent: int, extra: list[BenefitRule]) -> list[BenefitRule]:
    return [
        _b("discount_percent", kind="discount", percent=percent),
        _b("priority_booking"),
        _b("birthday_voucher", kind="voucher", value_fen=100_000, uses=1, valid_days=31, trigger="birthday"),
        *extra,
    ]


_SKIN = _b("annual_skin_check", uses=1, valid_days=365)
_CARE = _b("care_pack", uses=1, valid_days=90, trigger="purchase")

DEFAULT_POLICY = Policy(
    version=1,
    tiers=[
        TierRule(code="member", name="普通会员", spend_fen=0, points=0),
        TierRule(code="silver", name="银卡会员", spend_fen=5_000_000, points=50_000),
        TierRule(code="gold", name="金卡会员", spend_fen=15_000_000, points=150_000),
        TierRule(code="diamond", name="钻石会员", spend_fen=30_000_000, points=300_000),
    ],
    benefits={
        "member": _tier_benefits(100, []),
        "silver": _tier_benefits(95, [_SKIN]),
        "gold": _tier_benefits(85, [_SKIN, _b("dedicated_doctor"), _CARE]),
        "diamond": _tier_benefits(70, [_SKIN, _b("dedicated_doctor"), _CARE, _b("private_plan"), _b("24h_response")]),
    },
)

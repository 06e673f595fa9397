"""Request and response bodies of the benefits API (not tables, not domain objects)."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, Field

from shared.schemas import Strict

from .domain import Status


class BenefitView(BaseModel):
    benefit_id: str
    code: str
    valid_from: datetime
    valid_until: datetime | None
    remaining_uses: int | None
    status: Status
    # added: what kind of benefit it is and what it is worth
    kind: str
    tier: str | None
    value_fen: int | None
    percent: int | None
    period: str | None = None  # what a once-per grant is once per: "2027", a tier-year's first day, a purchase


class BenefitList(BaseModel):
    items: list[BenefitView]


class Discount(BaseModel):
    discount_percent: int
    tier: str


class RedemptionRequest(Strict):
    clinic_id: str = Field(min_length=1, max_length=100)


class Redemption(BaseModel):
    redemption_id: str
    benefit_id: str
    code: str
    remaining_uses: int | None
    # added
    member_id: str
    clinic_id: str
    redeemed_at: datetime


class RunRequest(Strict):
    as_of: AwareDatetime | None = None


class BirthdayRun(BaseModel):
    granted: int
    as_of: datetime

"""Request and response bodies of the enrollment API (not tables, not domain objects)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, StrictBool, field_validator, model_validator

from shared import phones
from shared.events import Consents
from shared.schemas import Strict


def normalize_phone(raw: str) -> str:
    """E.164 (see shared.phones): every written form of a number is one member."""
    return phones.normalize_phone(raw)


Id = Field(min_length=1, max_length=100)
ConsentSource = Literal["clinic", "app"]
PolicyVersion = Field("1", min_length=1, max_length=40, pattern=r"^[\w.\-]+$")


class EnrolRequest(Strict):
    phone: str
    name: str = Field(min_length=1, max_length=100)
    birthday: date
    home_clinic_id: str = Id
    source: Literal["walk_in", "referral", "online", "event"]
    referral_code: str | None = Field(None, max_length=40)
    consents: Consents = Consents()
    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    #: a member under 14 may only be enrolled with a guardian's consent (SPEC §8): JSON true, nothing
    #: that merely looks like it ("yes", 1)
    guardian_consent: StrictBool = False
    #: where the consents were given; default: "clinic" for a POS or clinic-bound key, else "app"
    consent_source: ConsentSource | None = None
    #: the version of the privacy policy the member was shown
    privacy_policy_version: str = PolicyVersion

    _phone = field_validator("phone")(lambda cls, v: normalize_phone(v))

    @field_validator("birthday")
    @classmethod
    def _plausible_birthday(cls, v: date) -> date:
        if v.year < 1900 or v > date.today():
            raise ValueError("birthday must be between 1900-01-01 and today")
        return v


class EnrolResponse(BaseModel):
    member_id: str
    member_no: str
    referral_code: str
    enrolled_at: datetime


class MemberProfile(BaseModel):
    member_id: str
    member_no: str
    name: str
    phone: str
    birthday: date
    home_clinic_id: str
    source: str
    referral_code: str
    referred_by: str | None
    consents: Consents
    email: str | None
    enrolled_at: datetime
    referrals_completed: int = 0  # as referrer
    referral_status: Literal["pending", "completed"] | None = None  # as referee


class MemberList(BaseModel):
    items: list[MemberProfile]


class MemberPatch(Strict):
    """What to change; a field left out is unchanged. ``email: null`` removes the email; name and consents
    are required of a member, so null for them is a 422."""

    name: str | None = Field(None, min_length=1, max_length=100)
    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    consents: Consents | None = None
    consent_source: ConsentSource | None = None
    privacy_policy_version: str = PolicyVersion

    @field_validator("name", "consents", mode="before")
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("must not be null (leave the field out to keep it)")
        return v

    @property
    def removes_email(self) -> bool:
        return "email" in self.model_fields_set and self.email is None


class ConsentRecord(BaseModel):
    purpose: Literal["marketing", "sms", "email", "sensitive_data", "guardian"]
    granted: bool
    at: datetime
    source: str
    policy_version: str


class ConsentHistory(BaseModel):
    member_id: str
    consents: Consents
    items: list[ConsentRecord]


class ErasureAccepted(BaseModel):
    member_id: str
    status: Literal["erased"] = "erased"
    erased_at: datetime


class PurchaseItemIn(Strict):
    sku: str = Id
    category: str = Field(min_length=1, max_length=100)
    amount_fen: int = Field(ge=0, le=10**12)
    qty: int = Field(ge=1, le=10**6)


class PurchaseRequest(Strict):
    pos_txn_id: str = Id
    clinic_id: str = Id
    member_id: str = Id
    amount_fen: int = Field(gt=0, le=10**12)
    currency: Literal["CNY"]
    occurred_at: AwareDatetime
    items: list[PurchaseItemIn] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _amount_is_items_sum(self) -> PurchaseRequest:
        total = sum(i.amount_fen for i in self.items)
        if total != self.amount_fen:
            raise ValueError(f"amount_fen ({self.amount_fen}) must equal the sum of the items' amount_fen ({total})")
        return self


class PurchaseAccepted(BaseModel):
    purchase_id: str
    status: Literal["recorded"] = "recorded"


class ActivityRequest(Strict):
    activity_id: str = Id
    member_id: str = Id
    clinic_id: str = Id
    kind: str = Field(min_length=1, max_length=40, pattern=r"^[a-z_]+$")
    occurred_at: AwareDatetime


class ActivityAccepted(BaseModel):
    activity_id: str
    status: Literal["recorded"] = "recorded"


class TierView(BaseModel):
    code: str
    name: str
    since: datetime | None
    review_at: datetime | None


class ProgressView(BaseModel):
    next_tier: str | None
    spend_fen: int
    spend_needed_fen: int
    points: int
    points_needed: int


class ExpiringView(BaseModel):
    points: int
    expires_on: date


class PointsView(BaseModel):
    balance: int
    available: int | None = None
    pending: int | None = None
    expiring: list[ExpiringView] = []


class BenefitView(BaseModel):
    benefit_id: str
    code: str
    remaining_uses: int | None
    valid_until: datetime | None


class MemberStatus(BaseModel):
    member_id: str
    tier: TierView
    progress: ProgressView
    points: PointsView
    benefits: list[BenefitView]
    as_of: datetime


class RefundRequest(Strict):
    refund_id: str = Id
    amount_fen: int = Field(gt=0, le=10**12)
    occurred_at: AwareDatetime
    member_id: str | None = Field(None, min_length=1, max_length=100)  # optional cross-check


class RefundAccepted(BaseModel):
    refund_id: str
    purchase_id: str
    amount_fen: int
    refunded_fen: int  # all refunds of the purchase so far
    remaining_fen: int
    status: Literal["recorded"] = "recorded"


class RunRequest(Strict):
    as_of: AwareDatetime | None = None


class ReferralRun(BaseModel):
    completed: int
    as_of: datetime


# ---- bulk import (SPEC §7) ---------------------------------------------------------------------

BATCH_MAX = 1000


class MemberImport(EnrolRequest):
    """A member of an imported history: an enrolment, with the id and enrolment time it already has."""

    member_id: str | None = Field(None, pattern=r"^[0-9a-fA-F-]{36}$")
    enrolled_at: AwareDatetime | None = None


class BatchRequest(Strict):
    """Up to 1,000 items; each is validated on its own (a bad one is rejected, the others go on)."""

    items: list[dict[str, Any]] = Field(min_length=1, max_length=BATCH_MAX)


class BatchItemResult(BaseModel):
    index: int
    status: Literal["created", "exists", "rejected"]
    id: str | None = None
    problem: dict[str, Any] | None = None


class BatchResult(BaseModel):
    items: list[BatchItemResult]
    created: int
    exists: int
    rejected: int

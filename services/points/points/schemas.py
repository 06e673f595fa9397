"""Request and response bodies of the points API (not tables, not domain objects)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, field_validator

from shared.events import EntryType
from shared.schemas import Strict

MAX_POINTS = 1_000_000_000


class RedemptionRequest(Strict):
    points: int = Field(gt=0, le=MAX_POINTS)
    reason: str = Field(min_length=1, max_length=200)


class AdjustmentRequest(Strict):
    delta: int = Field(ge=-MAX_POINTS, le=MAX_POINTS)
    reason: str = Field(min_length=1, max_length=200)

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("delta must not be 0")
        return v


class PostedEntry(BaseModel):
    entry_id: str
    balance: int


class PostedRedemption(PostedEntry):
    value_fen: int  # what the points were worth at the chain's redemption rate


class ExpiryRunRequest(Strict):
    as_of: AwareDatetime | None = None  # default: now


class ExpiryRunResult(BaseModel):
    warned: int  # lots announced (one PointsExpiringSoon each)
    expired: int  # lots whose remaining points were taken away
    expired_points: int
    as_of: datetime


class PolicyView(BaseModel):
    version: int
    policy: dict[str, Any]


class LotView(BaseModel):
    lot_id: str
    remaining: int
    earned_at: datetime
    expires_on: date
    available_at: datetime


class ExpiringView(BaseModel):
    points: int
    expires_on: date


class PointsSummary(BaseModel):
    balance: int
    available: int
    pending: int
    lots: list[LotView]
    expiring: list[ExpiringView]


class LedgerEntry(BaseModel):
    entry_id: str
    member_id: str
    delta: int
    balance: int
    entry_type: EntryType
    reason: str
    source_event_id: str | None
    occurred_at: datetime
    qualifying: bool
    capped: int
    created_at: datetime


class LedgerPage(BaseModel):
    items: list[LedgerEntry]
    next_cursor: str | None

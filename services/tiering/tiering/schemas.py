"""Request and response bodies of the tiering API (not tables, not domain objects).

The policy document itself is :class:`shared.policy.Policy`: every service reads the same
shape, and it already rejects what a chain must not configure (thresholds out of order,
unknown benefit codes, unknown fields).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from shared.policy import Policy

PolicyDocument = Policy


class ProgressView(BaseModel):
    next_tier: str | None
    spend_fen: int
    spend_needed_fen: int
    points: int
    points_needed: int


class MemberTier(BaseModel):
    code: str
    name: str
    since: datetime
    review_at: datetime | None
    policy_version: int
    progress: ProgressView


class TierChangeView(BaseModel):
    from_tier: str | None
    to_tier: str
    direction: Literal["up", "down", "none"]
    reason: str
    effective_at: datetime
    policy_version: int


class TierHistory(BaseModel):
    items: list[TierChangeView]

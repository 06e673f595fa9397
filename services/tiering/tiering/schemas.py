"""Request and response bodies of the tiering API (not tables, not domain objects).

The policy document itself is :class:`shared.policy.Policy`: every service reads the same
shape, and it already rejects what a chain must not configure (thresholds out of order,
unknown benefit codes, unknown fields).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field

from shared.policy import Policy
from shared.schemas import Strict

PolicyDocument = Policy


class ProgressView(BaseModel):
    next_tier: str | None
    spend_fen: int
    spend_needed_fen: int
    points: int
    points_needed: int


class OverrideView(BaseModel):
    tier: str
    reason: str
    until: datetime  # without an explicit until: the member's next review


class MemberTier(BaseModel):
    code: str
    name: str
    since: datetime
    review_at: datetime | None
    policy_version: int
    progress: ProgressView
    override: OverrideView | None = None  # present while an override holds


class TierChangeView(BaseModel):
    from_tier: str | None
    to_tier: str
    direction: Literal["up", "down", "none"]
    reason: str
    effective_at: datetime
    policy_version: int
    review_at: datetime | None = None
    note: str | None = None  # an override's reason


class TierHistory(BaseModel):
    items: list[TierChangeView]


# ---- reviews ------------------------------------------------------------------------------------


class ReviewRunRequest(Strict):
    as_of: AwareDatetime | None = None


class ReviewRun(BaseModel):
    reviewed: int
    moved_up: int
    moved_down: int
    unchanged: int
    as_of: datetime


# ---- overrides ----------------------------------------------------------------------------------


class OverrideRequest(Strict):
    to_tier: str = Field(min_length=1, max_length=40)
    reason: str = Field(min_length=1, max_length=500)
    until: AwareDatetime | None = None  # without it: until the member's next review


# ---- policy simulation and recalculation --------------------------------------------------------


class SimulateRequest(Strict):
    policy: Policy


class Moves(BaseModel):
    up: int
    down: int
    unchanged: int


class BenefitCost(BaseModel):
    current: int
    proposed: int


class Simulation(BaseModel):
    current: dict[str, int]
    proposed: dict[str, int]
    moves: Moves
    yearly_benefit_cost_fen: BenefitCost
    members: int
    as_of: datetime


class RecalculationStarted(BaseModel):
    job_id: str
    status: str
    policy_version: int
    total: int


class Recalculation(BaseModel):
    job_id: str
    status: Literal["running", "done", "failed"]
    policy_version: int
    total: int
    processed: int
    moved: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None = None


# ---- explain ------------------------------------------------------------------------------------


class TierRef(BaseModel):
    code: str
    name: str


class Threshold(BaseModel):
    code: str
    name: str
    spend_fen: int
    points: int


class Evidence(BaseModel):
    window_start: datetime
    window_end: datetime
    spend_fen: int
    points: int


class LastChange(BaseModel):
    from_tier: str | None
    to_tier: str
    direction: str
    reason: str
    effective_at: datetime
    policy_version: int
    note: str | None = None


class TierExplanation(BaseModel):
    member_id: str
    as_of: datetime
    tier: TierRef
    policy_version: int
    thresholds: list[Threshold]
    evidence: Evidence
    qualifies_for: str
    last_change: LastChange | None
    review_at: datetime | None

"""Tier rules as plain code (SPEC §4): qualification, progress to the next tier, review dates.

Pure functions over a :class:`shared.policy.Policy`; no database, HTTP or broker here.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from shared.policy import Policy, TierRule

DEFAULT_TIMEZONE = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Progress:
    """Where a member stands against the tier above their current one."""

    next_tier: str | None
    spend_fen: int
    spend_needed_fen: int
    points: int
    points_needed: int


def lowest_tier(policy: Policy) -> TierRule:
    return policy.tiers[0]


def qualified_tier(policy: Policy, spend_fen: int, points: int) -> str:
    """The highest tier whose spend OR qualifying-points threshold is reached.

    Thresholds increase with the tier (the policy validates it), and the lowest
    tier's are zero, so every member qualifies for at least the lowest tier.
    """
    reached = lowest_tier(policy).code
    for tier in policy.tiers:
        if spend_fen >= tier.spend_fen or points >= tier.points:
            reached = tier.code
    return reached


def rank(policy: Policy, code: str) -> int:
    """The tier's position, lowest first; a tier the policy no longer has ranks below all."""
    try:
        return policy.rank(code)
    except ValueError:
        return -1


def is_upgrade(policy: Policy, current: str, qualified: str) -> bool:
    return rank(policy, qualified) > rank(policy, current)


def progress(policy: Policy, current_tier: str, spend_fen: int, points: int) -> Progress:
    """Counters against the tier directly above ``current_tier`` (none above the top tier)."""
    position = rank(policy, current_tier)
    if position + 1 >= len(policy.tiers):
        return Progress(next_tier=None, spend_fen=spend_fen, spend_needed_fen=0, points=points, points_needed=0)
    target = policy.tiers[position + 1]
    return Progress(
        next_tier=target.code,
        spend_fen=spend_fen,
        spend_needed_fen=max(0, target.spend_fen - spend_fen),
        points=points,
        points_needed=max(0, target.points - points),
    )


def add_months(moment: datetime, months: int, tz: ZoneInfo = DEFAULT_TIMEZONE) -> datetime:
    """The same wall-clock time ``months`` later in ``tz``; the day is clamped to the month's end."""
    local = moment.astimezone(tz)
    month_index = local.month - 1 + months
    year, month = local.year + month_index // 12, month_index % 12 + 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    return local.replace(year=year, month=month, day=day).astimezone(moment.tzinfo)


def review_at(effective_at: datetime, review_months: int, tz: ZoneInfo = DEFAULT_TIMEZONE) -> datetime:
    """When a tier taken at ``effective_at`` is reviewed: ``review_months`` later (SPEC §4 Downgrades)."""
    return add_months(effective_at, review_months, tz)

"""Tier rules as plain code (SPEC §4): qualification, progress, review dates, reviews and overrides.

Pure functions over a :class:`shared.policy.Policy`; no database, HTTP or broker here.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from shared.platform import DEFAULT_TIMEZONE
from shared.policy import Policy, TierRule

# POS clocks run a little ahead: the enrollment API accepts occurred_at up to 5 minutes in the
# future, and such a fact must count at once rather than at the member's next event. A trailing
# window ending at ``as_of`` therefore holds the facts with ``as_of - window < occurred_at <= as_of
# + MAX_CLOCK_SKEW`` (the SQL that sums it: ``store.trailing_totals`` and ``simulation``).
MAX_CLOCK_SKEW = timedelta(minutes=5)


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
    :mod:`tiering.simulation` applies the same rule in SQL, to a whole chain in one query; a
    property test (tests/integration/test_tiering_rule_agreement.py) keeps the two in agreement.
    """
    reached = lowest_tier(policy).code
    for tier in policy.tiers:
        if spend_fen >= tier.spend_fen or points >= tier.points:
            reached = tier.code
    return reached


def tier_name(policy: Policy, code: str) -> str:
    """The tier's display name in ``policy`` (its code when the policy no longer has it)."""
    try:
        return policy.tier(code).name
    except KeyError:
        return code


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


# ---- reviews, overrides, recalculation ----------------------------------------------------------

Direction = Literal["up", "down", "none"]
#: why a tier was recorded (TierChanged.reason and the history row's reason)
ChangeReason = Literal["qualified", "review", "override", "recalculation"]


def direction(policy: Policy, from_tier: str | None, to_tier: str) -> Direction:
    """Up or down by the tiers' ranks in ``policy``; "none" when the tier stays."""
    if from_tier is None:
        return "up"
    if from_tier == to_tier:
        return "none"
    return "up" if rank(policy, to_tier) > rank(policy, from_tier) else "down"


def override_holds(override_tier: str | None, override_until: datetime | None, as_of: datetime) -> bool:
    """An override holds until ``override_until`` (exclusive). Every stored override has an end:
    one given without ``until`` ends at the member's next review (see :func:`override_end`)."""
    return override_tier is not None and (override_until is None or as_of < override_until)


def override_end(until: datetime | None, next_review: datetime) -> datetime:
    """When an override ends: its ``until``, or without one the member's next review, where
    normal evaluation resumes. An override is never a permanent floor."""
    return until if until is not None else next_review


def _at_least(policy: Policy, tier: str, floor: str | None) -> str:
    if floor is not None and rank(policy, floor) > rank(policy, tier):
        return floor
    return tier


def review_tier(policy: Policy, current: str, qualified: str, floor: str | None = None) -> str:
    """The tier a review moves a member to.

    Up to the qualified tier at once; down by at most ``policy.downgrade_max_steps`` tiers per
    review (a diamond member who qualifies for nothing becomes gold, then silver a review
    later); never below ``floor`` (an override that still holds).
    """
    if rank(policy, qualified) >= rank(policy, current):
        target = qualified
    else:
        lowest_allowed = max(0, rank(policy, current) - policy.downgrade_max_steps)
        target = policy.tiers[max(rank(policy, qualified), lowest_allowed)].code
    return _at_least(policy, target, floor)


def recalculated_tier(policy: Policy, qualified: str, floor: str | None = None) -> str:
    """The tier a recalculation moves a member to: exactly the tier the policy qualifies them for
    (no step limit: a new policy is applied as written), but not below an override that holds."""
    return _at_least(policy, qualified, floor)


def next_review_at(
    due: datetime | None, as_of: datetime, review_months: int, tz: ZoneInfo = DEFAULT_TIMEZONE
) -> datetime:
    """After a review at ``as_of``: the due date plus ``review_months`` keeps the member's own
    review cycle; if the reviews fell that far behind, ``review_months`` after ``as_of``."""
    if due is not None:
        following = add_months(due, review_months, tz)
        if following > as_of:
            return following
    return add_months(as_of, review_months, tz)


# ---- what-if simulation -------------------------------------------------------------------------


def voucher_value_fen(policy: Policy, tier: str) -> int:
    """The face value of the vouchers a member of ``tier`` gets in a year (e.g. the birthday voucher)."""
    return sum(rule.value_fen or 0 for rule in policy.benefits_of(tier) if rule.kind == "voucher")


def yearly_benefit_cost_fen(policy: Policy, tier: str, members: int, spend_fen: int) -> int:
    """What ``members`` members of ``tier`` cost the chain in a year under ``policy``.

    The cost model: each member costs the face value of the tier's vouchers, plus the discount
    on their spend, i.e. their recorded trailing-window spend (never below zero) times
    ``(100 - discount percent) / 100``. ``spend_fen`` is the group's total such spend.
    """
    discount = policy.discount_percent(tier)
    return members * voucher_value_fen(policy, tier) + max(0, spend_fen) * (100 - discount) // 100


def simulated_move(current_policy: Policy, proposal: Policy, current: str, proposed: str) -> Direction:
    """Whether a member would move up or down from ``current`` to ``proposed`` under the proposal.
    Ranks are the proposal's; a tier the proposal drops keeps its position in the current policy."""
    if current == proposed:
        return "none"
    kept = current in {t.code for t in proposal.tiers}
    from_rank = rank(proposal, current) if kept else rank(current_policy, current)
    to_rank = rank(proposal, proposed)
    return "none" if to_rank == from_rank else "up" if to_rank > from_rank else "down"


@dataclass(frozen=True)
class ReviewOutcome:
    """What a review run does to one member: the tier after it, the next review date, whether the
    change is recorded (history row + TierChanged), and whether an override ended."""

    to_tier: str
    review_at: datetime | None
    recorded: bool
    override_ended: bool


def review_member(
    policy: Policy,
    *,
    tier: str,
    review_at: datetime | None,
    override_tier: str | None,
    override_until: datetime | None,
    qualified: str,
    as_of: datetime,
    tz: ZoneInfo = DEFAULT_TIMEZONE,
) -> ReviewOutcome | None:
    """One member's review as of ``as_of``; None when nothing is due.

    * A due review (``review_at <= as_of``) moves the member to ``review_tier`` (one step down at
      most, never below an override that still holds) and is always recorded, also when the tier
      stays: the review happened and the next one is a cycle later.
    * An override whose end passed, with no review due, hands the member back to normal
      evaluation: if they still hold the override's tier, they move to the qualified tier (the
      same step limit) with a review cycle starting now; if the tier stays, or they already moved
      on by qualifying higher, the override just ends, unrecorded.
    """
    due = review_at is not None and review_at <= as_of
    override_over = override_tier is not None and not override_holds(override_tier, override_until, as_of)
    if due:
        floor = override_tier if override_holds(override_tier, override_until, as_of) else None
        return ReviewOutcome(
            review_tier(policy, tier, qualified, floor),
            next_review_at(review_at, as_of, policy.review_months, tz),
            True,
            override_over,
        )
    if not override_over:
        return None
    to_tier = review_tier(policy, tier, qualified) if tier == override_tier else tier
    if to_tier == tier:
        return ReviewOutcome(tier, review_at, False, True)
    return ReviewOutcome(to_tier, add_months(as_of, policy.review_months, tz), True, True)

"""The pure review, override, recalculation and simulation rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from shared.policy import DEFAULT_POLICY as P
from tiering.domain import (
    direction,
    next_review_at,
    override_end,
    override_holds,
    rank,
    recalculated_tier,
    review_member,
    review_tier,
    simulated_move,
    yearly_benefit_cost_fen,
)

TIERS = [t.code for t in P.tiers]
NOW = datetime(2026, 3, 10, 4, 0, tzinfo=UTC)
DUE = NOW - timedelta(hours=1)


def test_a_diamond_member_who_qualifies_for_nothing_drops_only_to_gold_then_silver() -> None:
    assert review_tier(P, "diamond", "member") == "gold"
    assert review_tier(P, "gold", "member") == "silver"
    assert review_tier(P, "silver", "member") == "member"


def test_a_policy_allowing_two_steps_drops_diamond_to_silver() -> None:
    two = P.model_copy(update={"downgrade_max_steps": 2})
    assert review_tier(two, "diamond", "member") == "silver"
    assert review_tier(two, "silver", "member") == "member"


def test_a_review_upgrades_at_once_to_the_qualified_tier() -> None:
    assert review_tier(P, "member", "diamond") == "diamond"


def test_a_review_never_moves_below_an_override_that_holds() -> None:
    assert review_tier(P, "gold", "member", floor="gold") == "gold"
    assert review_tier(P, "diamond", "member", floor="gold") == "gold"
    assert review_tier(P, "silver", "diamond", floor="gold") == "diamond"


@given(current=st.sampled_from(TIERS), qualified=st.sampled_from(TIERS), steps=st.integers(1, 5))
def test_a_review_never_drops_more_than_the_allowed_steps_nor_below_the_qualified_tier(
    current: str, qualified: str, steps: int
) -> None:
    policy = P.model_copy(update={"downgrade_max_steps": steps})
    after = review_tier(policy, current, qualified)
    assert rank(P, after) >= rank(P, current) - steps
    assert rank(P, after) >= rank(P, qualified)
    assert rank(P, after) <= max(rank(P, current), rank(P, qualified))


def test_recalculation_applies_the_qualified_tier_with_no_step_limit_but_respects_an_override() -> None:
    assert recalculated_tier(P, "member") == "member"
    assert recalculated_tier(P, "member", floor="silver") == "silver"
    assert recalculated_tier(P, "gold", floor="silver") == "gold"


def test_direction_follows_the_ranks() -> None:
    assert (direction(P, "silver", "gold"), direction(P, "gold", "silver"), direction(P, "gold", "gold")) == (
        "up",
        "down",
        "none",
    )


def test_an_override_holds_until_its_end_exclusive() -> None:
    until = NOW + timedelta(days=3)
    assert override_holds("gold", until, NOW)
    assert not override_holds("gold", until, until)
    assert not override_holds(None, until, NOW)


def test_an_override_without_until_ends_at_the_next_review() -> None:
    review = NOW + timedelta(days=365)
    assert override_end(None, review) == review
    assert override_end(NOW + timedelta(days=9), review) == NOW + timedelta(days=9)


def test_the_next_review_keeps_the_members_cycle_or_restarts_it_when_far_behind() -> None:
    assert next_review_at(DUE, NOW, 12) == datetime(2027, 3, 10, 3, 0, tzinfo=UTC)
    long_overdue = NOW - timedelta(days=800)
    assert next_review_at(long_overdue, NOW, 12) == datetime(2027, 3, 10, 4, 0, tzinfo=UTC)


def test_nothing_happens_to_a_member_whose_review_is_not_due_and_who_has_no_override() -> None:
    assert (
        review_member(
            P,
            tier="gold",
            review_at=NOW + timedelta(seconds=1),
            override_tier=None,
            override_until=None,
            qualified="member",
            as_of=NOW,
        )
        is None
    )


def test_a_due_review_with_no_change_is_still_recorded_and_moves_the_review_date() -> None:
    outcome = review_member(
        P, tier="silver", review_at=DUE, override_tier=None, override_until=None, qualified="silver", as_of=NOW
    )
    assert outcome is not None
    assert (outcome.to_tier, outcome.recorded, outcome.override_ended) == ("silver", True, False)
    assert outcome.review_at == next_review_at(DUE, NOW, 12)


def test_an_override_holding_through_a_review_keeps_the_member_and_ends_afterwards() -> None:
    until = NOW + timedelta(days=30)
    during = review_member(
        P, tier="gold", review_at=DUE, override_tier="gold", override_until=until, qualified="member", as_of=NOW
    )
    assert during is not None and (during.to_tier, during.override_ended) == ("gold", False)
    after = review_member(
        P,
        tier="gold",
        review_at=during.review_at,
        override_tier="gold",
        override_until=until,
        qualified="silver",
        as_of=until,
    )
    assert after is not None
    assert (after.to_tier, after.recorded, after.override_ended) == ("silver", True, True)
    assert after.review_at == next_review_at(None, until, 12)


def test_an_override_ending_drops_at_most_one_tier() -> None:
    outcome = review_member(
        P,
        tier="diamond",
        review_at=NOW + timedelta(days=100),
        override_tier="diamond",
        override_until=NOW,
        qualified="member",
        as_of=NOW,
    )
    assert outcome is not None and outcome.to_tier == "gold"


def test_an_override_ending_for_a_member_who_qualifies_for_it_changes_nothing_visible() -> None:
    review = NOW + timedelta(days=100)
    outcome = review_member(
        P, tier="gold", review_at=review, override_tier="gold", override_until=NOW, qualified="gold", as_of=NOW
    )
    assert outcome is not None
    assert (outcome.to_tier, outcome.review_at, outcome.recorded, outcome.override_ended) == (
        "gold",
        review,
        False,
        True,
    )


def test_an_override_ending_after_the_member_qualified_higher_leaves_the_tier_alone() -> None:
    outcome = review_member(
        P,
        tier="diamond",
        review_at=NOW + timedelta(days=100),
        override_tier="silver",
        override_until=NOW,
        qualified="member",
        as_of=NOW,
    )
    assert outcome is not None and (outcome.to_tier, outcome.recorded) == ("diamond", False)


def test_an_override_ended_at_a_due_review_is_no_floor_there() -> None:
    outcome = review_member(
        P, tier="gold", review_at=DUE, override_tier="gold", override_until=DUE, qualified="member", as_of=NOW
    )
    assert outcome is not None and (outcome.to_tier, outcome.override_ended) == ("silver", True)


def test_the_yearly_cost_is_vouchers_plus_the_discount_on_spend() -> None:
    # gold: 85% paid, a 1,000-yuan birthday voucher; two members who spent 200,000 yuan together
    assert yearly_benefit_cost_fen(P, "gold", 2, 20_000_000) == 2 * 100_000 + 3_000_000
    assert yearly_benefit_cost_fen(P, "member", 1, 5_000_000) == 100_000
    assert yearly_benefit_cost_fen(P, "diamond", 1, -10) == 100_000


def test_a_simulated_move_compares_ranks_in_the_proposal() -> None:
    assert simulated_move(P, P, "silver", "member") == "down"
    assert simulated_move(P, P, "silver", "gold") == "up"
    assert simulated_move(P, P, "gold", "gold") == "none"

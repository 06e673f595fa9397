"""What-if: how a proposed policy would sort the chain's members, from recorded history.

One SQL statement does the heavy part: each member's trailing spend and qualifying points
(``GROUP BY member_id`` over the facts in the window), classified against the proposal's
thresholds passed as arrays, and grouped down to a handful of rows
(current tier, override floor, proposed rank) with their counts and spend totals. Python
then only adds up those groups, so 100,000 members cost one query. Nothing is written.

"current" counts the members' tiers as held now; "proposed" is the tier each would qualify for
under the proposal, with no one-step limit, i.e. what ``POST /v1/policy/recalculate`` would do
after the proposal is stored (an override that still holds is a floor there too).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from shared.db import UnitOfWork
from shared.policy import Policy

from . import domain, schemas
from .domain import MAX_CLOCK_SKEW
from .policies import POLICIES
from .tables import SCHEMA

# Per member: spend over the current policy's window (for today's discount cost), spend and
# points over the proposal's window (qualification and the proposed discount cost); spend
# never counts below zero. The thresholds come in as arrays: rank i qualifies when spend or
# points reach them, and the member's rank is the highest reached (rank 0 has zero thresholds).
# This is the qualification rule a second time, in SQL: the trailing window of
# store.trailing_totals and domain.qualified_tier (and the override floor of domain.override_holds).
# tests/integration/test_tiering_rule_agreement.py feeds both the same random histories and
# policies and asserts they agree: change one, change the other.
_SIMULATE = text(f"""
WITH per_member AS (
    SELECT m.tier,
           CASE WHEN m.override_tier IS NOT NULL AND (m.override_until IS NULL OR m.override_until > :as_of)
                THEN m.override_tier END AS floor,
           GREATEST(0, COALESCE(SUM(f.spend_fen) FILTER (WHERE f.occurred_at > :current_start), 0)) AS spend_current,
           GREATEST(0, COALESCE(SUM(f.spend_fen) FILTER (WHERE f.occurred_at > :proposed_start), 0)) AS spend_proposed,
           COALESCE(SUM(f.points) FILTER (WHERE f.occurred_at > :proposed_start), 0) AS points_proposed
    FROM {SCHEMA}.members m
    LEFT JOIN {SCHEMA}.qualifying_facts f
           ON f.member_id = m.member_id
          AND f.occurred_at > LEAST(CAST(:current_start AS timestamptz), CAST(:proposed_start AS timestamptz))
          AND f.occurred_at <= :window_end
    WHERE m.chain_id = :chain_id
    GROUP BY m.member_id
)
SELECT p.tier, p.floor,
       (SELECT COALESCE(MAX(t.rank), 0)
          FROM unnest(CAST(:ranks AS int[]), CAST(:spends AS bigint[]), CAST(:points AS bigint[]))
               AS t(rank, spend_fen, points)
         WHERE p.spend_proposed >= t.spend_fen OR p.points_proposed >= t.points) AS proposed_rank,
       COUNT(*) AS members,
       SUM(p.spend_current) AS spend_current,
       SUM(p.spend_proposed) AS spend_proposed
FROM per_member p
GROUP BY 1, 2, 3
""")


async def member_groups(
    uow: UnitOfWork, *, chain_id: str, current: Policy, proposal: Policy, as_of: datetime
) -> list[Any]:
    """The chain's members grouped by (tier, floor, proposed_rank), with ``members``, ``spend_current``
    and ``spend_proposed`` per group."""
    return list(
        (
            await uow.execute(
                _SIMULATE,
                {
                    "chain_id": chain_id,
                    "as_of": as_of,
                    "window_end": as_of + MAX_CLOCK_SKEW,
                    "current_start": as_of - timedelta(days=current.qualification_window_days),
                    "proposed_start": as_of - timedelta(days=proposal.qualification_window_days),
                    "ranks": list(range(len(proposal.tiers))),
                    "spends": [t.spend_fen for t in proposal.tiers],
                    "points": [t.points for t in proposal.tiers],
                },
            )
        ).all()
    )


async def simulate(uow: UnitOfWork, *, chain_id: str, proposal: Policy) -> schemas.Simulation:
    """Counts per tier now and under ``proposal``, the moves, and the yearly benefit cost of both
    (:func:`domain.yearly_benefit_cost_fen`: vouchers' face value plus the discount on the
    members' recorded trailing spend)."""
    current = await POLICIES.get(uow, chain_id)
    as_of = uow.now()
    held: Counter[str] = Counter({t.code: 0 for t in current.tiers})
    proposed: Counter[str] = Counter({t.code: 0 for t in proposal.tiers})
    moves: Counter[str] = Counter({"up": 0, "down": 0, "none": 0})
    cost_current = cost_proposed = 0
    proposal_codes = {t.code for t in proposal.tiers}
    for g in await member_groups(uow, chain_id=chain_id, current=current, proposal=proposal, as_of=as_of):
        floor = g.floor if g.floor in proposal_codes else None
        to_tier = domain.recalculated_tier(proposal, proposal.tiers[g.proposed_rank].code, floor)
        n = int(g.members)
        held[g.tier] += n
        proposed[to_tier] += n
        moves[domain.simulated_move(current, proposal, g.tier, to_tier)] += n
        cost_current += domain.yearly_benefit_cost_fen(current, g.tier, n, int(g.spend_current))
        cost_proposed += domain.yearly_benefit_cost_fen(proposal, to_tier, n, int(g.spend_proposed))
    return schemas.Simulation(
        current=dict(held),
        proposed=dict(proposed),
        moves=schemas.Moves(up=moves["up"], down=moves["down"], unchanged=moves["none"]),
        yearly_benefit_cost_fen=schemas.BenefitCost(current=cost_current, proposed=cost_proposed),
        members=sum(held.values()),
        as_of=as_of,
    )

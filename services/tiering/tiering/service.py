"""The tiering service, described once for the shared runner."""

from shared.personal_data import ExportSource, MemberRows, export_router
from shared.service import Schedule, ServiceDefinition

from . import jobs
from .api import router, snapshots_router
from .handlers import HANDLERS, prepare
from .tables import members, qualifying_facts, shared, tier_history

#: what tiering holds on a member (SPEC §8 access)
EXPORT = ExportSource(
    anchor=members,
    rows=[
        MemberRows("members", members),
        MemberRows("qualifying_facts", qualifying_facts),
        MemberRows("tier_history", tier_history),
    ],
)

# a recalculation is started by ops and watched through its progress: pick it up within seconds,
# whatever the (daily-ish) review interval is; an idle poll is one query on a tiny partial index
RECALCULATION_POLL_SECONDS = 2.0

SERVICE = ServiceDefinition(
    name="tiering",
    tables=shared,
    routers=[router, snapshots_router, export_router("tiering", EXPORT)],
    handlers=HANDLERS,
    prepare=prepare,
    schedules=[
        Schedule("tier-reviews", jobs.tier_reviews),
        Schedule("policy-recalculations", jobs.policy_recalculations, interval_seconds=RECALCULATION_POLL_SECONDS),
    ],
    description="Tier policy, qualification counters, member tiers, reviews, overrides and tier history.",
)

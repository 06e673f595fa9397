"""The tiering service, described once for the shared runner."""

from shared.api import ServiceContext
from shared.service import Schedule, ServiceDefinition

from .api import router
from .handlers import HANDLERS, prepare
from .recalculation import process_recalculations
from .reviews import run_due_reviews
from .tables import shared

# a recalculation is started by ops and watched through its progress: pick it up within seconds,
# whatever the (daily-ish) review interval is; an idle poll is one query on a tiny partial index
RECALCULATION_POLL_SECONDS = 2.0


async def run_reviews(ctx: ServiceContext) -> int:
    _, tally = await run_due_reviews(ctx.db)
    return tally.reviewed


SERVICE = ServiceDefinition(
    name="tiering",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    prepare=prepare,
    schedules=[
        Schedule("tier-reviews", lambda ctx, run: run_reviews(ctx)),
        Schedule(
            "policy-recalculations",
            lambda ctx, run: process_recalculations(ctx),
            interval_seconds=RECALCULATION_POLL_SECONDS,
        ),
    ],
    description="Tier policy, qualification counters, member tiers, reviews, overrides and tier history.",
)

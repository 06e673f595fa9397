"""The points service, described once for the shared runner."""

from shared.api import ServiceContext
from shared.service import Schedule, ServiceDefinition

from .api import ops_router, router
from .handlers import HANDLERS, prepare, run_expiry
from .tables import shared


async def expire_points(ctx: ServiceContext) -> None:
    """Every chain's expiry pass as of now (the ops endpoint runs one chain's, as of any instant)."""
    chains = await ctx.platform.all_chains()
    await run_expiry(ctx.db, chain_ids=[c.chain_id for c in chains])


SERVICE = ServiceDefinition(
    name="points",
    tables=shared,
    routers=[router, ops_router],
    handlers=HANDLERS,
    prepare=prepare,
    schedules=[Schedule(name="expire-points", run=lambda ctx, run: expire_points(ctx))],
    description="The points ledger: earning from spend, behaviour and referrals, lots, redemption, reversal, expiry.",
)

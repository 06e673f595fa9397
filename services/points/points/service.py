"""The points service, described once for the shared runner."""

from shared.api import ServiceContext
from shared.service import Schedule, ServiceDefinition

from .api import router
from .handlers import HANDLERS, expire_due_points
from .tables import shared


async def expire_points(ctx: ServiceContext) -> None:
    await expire_due_points(ctx.db)


SERVICE = ServiceDefinition(
    name="points",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    schedules=[Schedule(name="expire-points", run=expire_points)],
    description="The points ledger: earning from spend, behaviour and referrals, lots, redemption, reversal, expiry.",
)

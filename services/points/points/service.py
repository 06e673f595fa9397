"""The points service, described once for the shared runner."""

from shared.service import Schedule, ServiceDefinition

from .api import ops_router, router, snapshots_router
from .handlers import HANDLERS, prepare
from .jobs import expire_points
from .tables import shared

SERVICE = ServiceDefinition(
    name="points",
    tables=shared,
    routers=[router, ops_router, snapshots_router],
    handlers=HANDLERS,
    prepare=prepare,
    # every chain's expiry pass as of now (the ops endpoint runs one chain's, as of any instant)
    schedules=[Schedule(name="expire-points", run=expire_points)],
    description="The points ledger: earning from spend, behaviour and referrals, lots, redemption, reversal, expiry.",
)

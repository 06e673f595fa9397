"""The notify service, described once for the shared runner."""

from shared.service import Schedule, ServiceDefinition

from .api import router
from .delivery import Deliveries
from .handlers import HANDLERS, purge_parked
from .tables import shared

DELIVERIES = Deliveries()

SERVICE = ServiceDefinition(
    name="notify",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    # due notifications are picked up within ~0.2 s; retries wait for their next_attempt_at
    schedules=[
        Schedule(name="deliver-notifications", run=lambda ctx, run: DELIVERIES(ctx), interval_seconds=0.2),
        Schedule(name="purge-parked-events", run=lambda ctx, run: purge_parked(ctx.db), interval_seconds=3600),
    ],
    description="Templates, preferences, notifications and their delivery over webhook, SMS and email.",
)

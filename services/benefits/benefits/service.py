"""The benefits service, described once for the shared runner."""

from shared.service import Schedule, ServiceDefinition

from .api import router
from .handlers import HANDLERS, expire_due_benefits
from .tables import shared

SERVICE = ServiceDefinition(
    name="benefits",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    schedules=[Schedule(name="expire-benefits", run=expire_due_benefits)],
    description="Benefit entitlements per tier and referral, their redemptions.",
)

"""The benefits service, described once for the shared runner."""

from shared.service import Schedule, ServiceDefinition

from .api import router, snapshots_router
from .handlers import HANDLERS
from .jobs import expire_due_benefits, grant_birthday_vouchers
from .tables import shared

SERVICE = ServiceDefinition(
    name="benefits",
    tables=shared,
    routers=[router, snapshots_router],
    handlers=HANDLERS,
    schedules=[
        Schedule(name="expire-benefits", run=expire_due_benefits),
        Schedule(name="birthday-vouchers", run=grant_birthday_vouchers),
    ],
    description="Benefit entitlements per tier, birthday, purchase and referral; their redemptions.",
)

"""The benefits service, described once for the shared runner."""

from shared.service import Schedule, ServiceDefinition

from .api import router
from .handlers import HANDLERS, expire_due_benefits, grant_due_birthday_vouchers
from .tables import shared

SERVICE = ServiceDefinition(
    name="benefits",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    schedules=[
        Schedule(name="expire-benefits", run=lambda ctx, run: expire_due_benefits(ctx)),
        Schedule(name="birthday-vouchers", run=lambda ctx, run: grant_due_birthday_vouchers(ctx)),
    ],
    description="Benefit entitlements per tier, birthday, purchase and referral; their redemptions.",
)

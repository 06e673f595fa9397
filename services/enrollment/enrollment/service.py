"""The enrollment service, described once for the shared runner."""

from shared.admin import admin_router
from shared.service import Schedule, ServiceDefinition

from .api import router
from .handlers import HANDLERS, prepare
from .jobs import complete_referrals
from .tables import shared

SERVICE = ServiceDefinition(
    name="enrollment",
    tables=shared,
    # platform administration (chains and keys) is served by enrollment (SPEC §7)
    routers=[router, admin_router()],
    handlers=HANDLERS,
    prepare=prepare,
    schedules=[Schedule("complete-referrals", complete_referrals)],
    description="Members, referral codes, purchase and activity intake, the member status view.",
)

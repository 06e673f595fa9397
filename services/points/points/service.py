"""The points service, described once for the shared runner."""

from shared.service import ServiceDefinition

from .api import router
from .handlers import HANDLERS
from .tables import shared

SERVICE = ServiceDefinition(
    name="points",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    description="The points ledger: earning from spend, behaviour and referrals, lots, redemption, reversal.",
)

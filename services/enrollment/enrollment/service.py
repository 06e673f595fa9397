"""The enrollment service, described once for the shared runner."""

from shared.service import ServiceDefinition

from .api import router
from .handlers import HANDLERS
from .tables import shared

SERVICE = ServiceDefinition(
    name="enrollment",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    description="Members, referral codes, purchase and activity intake, the member status view.",
)

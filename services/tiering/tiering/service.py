"""The tiering service, described once for the shared runner."""

from shared.service import ServiceDefinition

from .api import router
from .handlers import HANDLERS
from .tables import shared

SERVICE = ServiceDefinition(
    name="tiering",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    description="Tier policy, qualification counters, member tiers and tier history.",
)

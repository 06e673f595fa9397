"""The benefits service, described once for the shared runner."""

from shared.service import ServiceDefinition

from .tables import shared

SERVICE = ServiceDefinition(name="benefits", tables=shared, routers=[], handlers={})

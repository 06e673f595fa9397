"""The points service, described once for the shared runner."""

from shared.service import ServiceDefinition

from .tables import shared

SERVICE = ServiceDefinition(name="points", tables=shared, routers=[], handlers={})

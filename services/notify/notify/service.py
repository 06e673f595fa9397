"""The notify service, described once for the shared runner."""

from shared.service import ServiceDefinition

from .tables import shared

SERVICE = ServiceDefinition(name="notify", tables=shared, routers=[], handlers={})

"""The notify service, described once for the shared runner."""

from shared.personal_data import ExportSource, MemberRows, export_router
from shared.service import Schedule, ServiceDefinition

from .api import router
from .channels import production_problems
from .handlers import HANDLERS
from .jobs import Deliveries, purge_parked_events
from .tables import contacts, notifications, parked_events, preferences, shared

#: what notify holds on a member (SPEC §8 access)
EXPORT = ExportSource(
    anchor=contacts,
    rows=[
        MemberRows("contacts", contacts),
        MemberRows("preferences", preferences),
        MemberRows("notifications", notifications),
        MemberRows("parked_events", parked_events),
    ],
)

SERVICE = ServiceDefinition(
    name="notify",
    tables=shared,
    routers=[router, export_router("notify", EXPORT)],
    handlers=HANDLERS,
    # due notifications are picked up within ~0.2 s; retries wait for their next_attempt_at
    schedules=[
        Schedule(name="deliver-notifications", run=Deliveries(), interval_seconds=1.0, after_events=True),
        Schedule(name="purge-parked-events", run=purge_parked_events, interval_seconds=3600),
    ],
    description="Templates, preferences, notifications and their delivery over webhook, SMS and email.",
    production_problems=production_problems,
)

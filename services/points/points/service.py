"""The points service, described once for the shared runner."""

from shared.personal_data import ExportSource, MemberRows, export_router
from shared.service import Schedule, ServiceDefinition

from .api import ops_router, router, snapshots_router
from .handlers import HANDLERS, prepare
from .jobs import expire_points
from .tables import behaviour_months, entries, lots, members, purchase_points, shared

#: what points holds on a member (SPEC §8 access)
EXPORT = ExportSource(
    anchor=members,
    rows=[
        MemberRows("members", members),
        MemberRows("lots", lots),
        MemberRows("entries", entries),
        MemberRows("purchase_points", purchase_points),
        MemberRows("behaviour_months", behaviour_months),
    ],
)

SERVICE = ServiceDefinition(
    name="points",
    tables=shared,
    routers=[router, ops_router, snapshots_router, export_router("points", EXPORT)],
    handlers=HANDLERS,
    prepare=prepare,
    # every chain's expiry pass as of now (the ops endpoint runs one chain's, as of any instant)
    schedules=[Schedule(name="expire-points", run=expire_points)],
    description="The points ledger: earning from spend, behaviour and referrals, lots, redemption, reversal, expiry.",
)

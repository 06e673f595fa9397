"""The enrollment service, described once for the shared runner."""

from shared.admin import admin_router
from shared.personal_data import ExportSource, MemberRows, export_router
from shared.service import Schedule, ServiceDefinition

from .api import router
from .handlers import HANDLERS, prepare
from .jobs import complete_referrals
from .tables import activities, consent_records, member_status, members, purchases, referrals, refunds, shared

#: what enrollment holds on a member (SPEC §8 access)
EXPORT = ExportSource(
    anchor=members,
    rows=[
        MemberRows("members", members),
        MemberRows("consent_records", consent_records),
        MemberRows("purchases", purchases),
        MemberRows("refunds", refunds),
        MemberRows("activities", activities),
        MemberRows("referrals_as_referee", referrals, "referee_id"),
        MemberRows("referrals_as_referrer", referrals, "referrer_id"),
        MemberRows("member_status", member_status),
    ],
)

SERVICE = ServiceDefinition(
    name="enrollment",
    tables=shared,
    # platform administration (chains and keys) is served by enrollment (SPEC §7)
    routers=[router, admin_router(), export_router("enrollment", EXPORT)],
    handlers=HANDLERS,
    prepare=prepare,
    schedules=[Schedule("complete-referrals", complete_referrals)],
    description="Members, referral codes, purchase and activity intake, the member status view.",
)

"""The benefits service, described once for the shared runner."""

from shared.personal_data import ExportSource, MemberRows, export_router
from shared.service import Schedule, ServiceDefinition

from .api import router, snapshots_router
from .handlers import HANDLERS
from .jobs import expire_due_benefits, grant_birthday_vouchers
from .tables import entitlements, large_purchases, members, redemptions, shared, tier_changes

#: what benefits holds on a member (SPEC §8 access)
EXPORT = ExportSource(
    anchor=members,
    rows=[
        MemberRows("members", members),
        MemberRows("entitlements", entitlements),
        MemberRows("redemptions", redemptions),
        MemberRows("tier_changes", tier_changes),
        MemberRows("large_purchases", large_purchases),
    ],
)

SERVICE = ServiceDefinition(
    name="benefits",
    tables=shared,
    routers=[router, snapshots_router, export_router("benefits", EXPORT)],
    handlers=HANDLERS,
    schedules=[
        Schedule(name="expire-benefits", run=expire_due_benefits),
        Schedule(name="birthday-vouchers", run=grant_birthday_vouchers),
    ],
    description="Benefit entitlements per tier, birthday, purchase and referral; their redemptions.",
)

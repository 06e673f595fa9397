"""The enrollment service, described once for the shared runner."""

from shared.api import ServiceContext
from shared.service import Schedule, ServiceDefinition

from .api import router
from .handlers import HANDLERS, complete_due_referrals
from .tables import shared


async def complete_referrals(ctx: ServiceContext) -> int:
    async with ctx.db.unit_of_work() as uow:
        return await complete_due_referrals(uow, as_of=uow.now())


SERVICE = ServiceDefinition(
    name="enrollment",
    tables=shared,
    routers=[router],
    handlers=HANDLERS,
    schedules=[Schedule("complete-referrals", lambda ctx, run: complete_referrals(ctx))],
    description="Members, referral codes, purchase and activity intake, the member status view.",
)

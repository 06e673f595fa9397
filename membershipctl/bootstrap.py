"""``membershipctl bootstrap``: the first chain and key of a fresh installation, straight into the
database (there is no key to call an API with yet). Nothing else creates keys in production."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from shared.admin import ChainCreate
from shared.db import make_engine
from shared.platform import chains, insert_key, keys
from shared.settings import Settings

from .client import REFUSED, UNAVAILABLE, USAGE, CliError


async def bootstrap(*, chain_id: str, name: str, timezone: str, settings: Settings | None = None) -> dict[str, Any]:
    from pydantic import ValidationError

    try:
        chain = ChainCreate(chain_id=chain_id, name=name, timezone=timezone)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CliError(problems, USAGE) from exc
    settings = settings or Settings()
    # the platform schema first (idempotent; services migrate their own schemas as they start)
    from shared.migrate import upgrade

    try:
        await asyncio.to_thread(upgrade, settings, [])
    except (OSError, DBAPIError) as exc:
        raise CliError(f"cannot migrate the platform schema: {exc}", UNAVAILABLE) from exc
    engine = make_engine(settings, pooled=False)
    try:
        async with engine.begin() as conn:
            # one bootstrap at a time, and only on a database without keys
            await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext("membership.bootstrap"))))
            if await conn.scalar(select(func.count()).select_from(keys)):
                raise CliError("This database already has keys: bootstrap runs once. Use `keys create`.", REFUSED)
            await conn.execute(
                chains.insert().values(chain_id=chain.chain_id, name=chain.name, timezone=chain.timezone)
            )
            key_id, secret = await insert_key(
                conn, chain.chain_id, ["ops", "platform"], name="bootstrap", created_by="bootstrap"
            )
    except DBAPIError as exc:
        raise CliError(f"the database refused: {exc.orig}", UNAVAILABLE) from exc
    except OSError as exc:
        raise CliError(f"the database is unreachable: {exc}", UNAVAILABLE) from exc
    finally:
        await engine.dispose()
    return {"chain_id": chain.chain_id, "key_id": key_id, "key": secret, "scopes": ["ops", "platform"]}

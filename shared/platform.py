"""The platform schema: chains and their API keys, shared by all five services.

Every service authenticates requests against ``platform.api_keys`` (keys stored
as SHA-256 hashes: they are random 32-byte secrets, so a slow hash adds nothing)
and reads a chain's time zone and webhook from ``platform.chains``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ARRAY, Column, DateTime, MetaData, Table, Text, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

log = logging.getLogger(__name__)

SCHEMA = "platform"
SCOPES = ("pos", "app", "ops")

metadata = MetaData(schema=SCHEMA)

chains = Table(
    "chains",
    metadata,
    Column("chain_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("timezone", Text, nullable=False, server_default="Asia/Shanghai"),
    Column("webhook_url", Text),
    Column("webhook_secret", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_hash", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True)),
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Chain:
    chain_id: str
    name: str
    timezone: str
    webhook_url: str | None
    webhook_secret: str | None


@dataclass(frozen=True)
class Principal:
    chain_id: str
    scopes: frozenset[str]
    key_name: str

    def allows(self, scope: str) -> bool:
        return "ops" in self.scopes or scope in self.scopes

    @property
    def is_ops(self) -> bool:
        return "ops" in self.scopes


class PlatformStore:
    """Looks keys and chains up, with a short cache so auth costs no query per request."""

    def __init__(self, engine: AsyncEngine, cache_seconds: float = 5.0) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._keys: dict[str, tuple[float, Principal | None]] = {}
        self._chains: dict[str, tuple[float, Chain | None]] = {}

    async def principal(self, key: str) -> Principal | None:
        h = hash_key(key)
        hit = self._keys.get(h)
        if hit and time.monotonic() - hit[0] < self.cache_seconds:
            return hit[1]
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.chain_id, api_keys.c.scopes, api_keys.c.name).where(
                        api_keys.c.key_hash == h, api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        p = Principal(row.chain_id, frozenset(row.scopes), row.name) if row else None
        self._keys[h] = (time.monotonic(), p)
        return p

    async def chain(self, chain_id: str) -> Chain | None:
        hit = self._chains.get(chain_id)
        if hit and time.monotonic() - hit[0] < self.cache_seconds:
            return hit[1]
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(chains).where(chains.c.chain_id == chain_id))).first()
        c = Chain(row.chain_id, row.name, row.timezone, row.webhook_url, row.webhook_secret) if row else None
        self._chains[chain_id] = (time.monotonic(), c)
        return c

    async def all_chains(self) -> list[Chain]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(chains))).all()
        return [Chain(r.chain_id, r.name, r.timezone, r.webhook_url, r.webhook_secret) for r in rows]


async def upsert_chain(
    engine: AsyncEngine,
    chain_id: str,
    name: str,
    *,
    timezone: str = "Asia/Shanghai",
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
) -> None:
    values = dict(
        chain_id=chain_id, name=name, timezone=timezone, webhook_url=webhook_url, webhook_secret=webhook_secret
    )
    async with engine.begin() as conn:
        await conn.execute(
            pg_insert(chains)
            .values(**values)
            .on_conflict_do_update(
                index_elements=["chain_id"], set_={k: v for k, v in values.items() if k != "chain_id"}
            )
        )


async def add_api_key(
    engine: AsyncEngine, chain_id: str, scopes: list[str], *, name: str, key: str | None = None
) -> str:
    """Store a key (hashed) and return it in the clear: the only time it is shown."""
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}")
    key = key or "mk_" + secrets.token_urlsafe(32)
    async with engine.begin() as conn:
        await conn.execute(
            pg_insert(api_keys)
            .values(
                key_hash=hash_key(key),
                chain_id=chain_id,
                scopes=scopes,
                name=name,
            )
            .on_conflict_do_update(
                index_elements=["key_hash"],
                set_={"chain_id": chain_id, "scopes": scopes, "name": name, "revoked_at": None},
            )
        )
    return key


DEFAULT_TIMEZONE = ZoneInfo("Asia/Shanghai")
_TIMEZONE_CACHE_SECONDS = 60.0
_timezones: dict[str, tuple[float, ZoneInfo]] = {}


async def chain_timezone(session: AsyncSession, chain_id: str) -> ZoneInfo:
    """The chain's time zone (its days, months, birthdays and quiet hours are local), cached per
    process for a minute; an unknown chain or zone name falls back to Asia/Shanghai."""
    hit = _timezones.get(chain_id)
    if hit and time.monotonic() - hit[0] < _TIMEZONE_CACHE_SECONDS:
        return hit[1]
    name = await session.scalar(select(chains.c.timezone).where(chains.c.chain_id == chain_id))
    try:
        tz = ZoneInfo(name) if name else DEFAULT_TIMEZONE
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone for chain; using Asia/Shanghai", extra={"chain_id": chain_id})
        tz = DEFAULT_TIMEZONE
    _timezones[chain_id] = (time.monotonic(), tz)
    return tz

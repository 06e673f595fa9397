"""The platform schema: chains and their API keys, shared by all five services.

Every service authenticates requests against ``platform.api_keys`` (keys stored
as SHA-256 hashes: they are random 32-byte secrets, so a slow hash adds nothing)
and reads a chain's time zone and webhook from ``platform.chains``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ARRAY, Column, DateTime, MetaData, Table, Text, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from .cache import TTLCache

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
        self._keys: TTLCache[str, Principal | None] = TTLCache(cache_seconds)
        self._chains: TTLCache[str, Chain | None] = TTLCache(cache_seconds)
        self._chain_ids: TTLCache[str, tuple[str, ...]] = TTLCache(cache_seconds)

    async def principal(self, key: str) -> Principal | None:
        async def load() -> Principal | None:
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(api_keys.c.chain_id, api_keys.c.scopes, api_keys.c.name).where(
                            api_keys.c.key_hash == h, api_keys.c.revoked_at.is_(None)
                        )
                    )
                ).first()
            return Principal(row.chain_id, frozenset(row.scopes), row.name) if row else None

        h = hash_key(key)
        return await self._keys.get_or_load(h, load)

    async def chain(self, chain_id: str) -> Chain | None:
        async def load() -> Chain | None:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(chains).where(chains.c.chain_id == chain_id))).first()
            return Chain(row.chain_id, row.name, row.timezone, row.webhook_url, row.webhook_secret) if row else None

        return await self._chains.get_or_load(chain_id, load)

    async def timezone(self, chain_id: str) -> ZoneInfo:
        """The chain's time zone (see :func:`chain_timezone`)."""
        async with self.engine.connect() as conn:
            return await chain_timezone(conn, chain_id)

    async def chain_ids(self) -> tuple[str, ...]:
        """Every chain's id (what a scheduled job runs for), cached like keys."""

        async def load() -> tuple[str, ...]:
            async with self.engine.connect() as conn:
                return tuple((await conn.execute(select(chains.c.chain_id).order_by(chains.c.chain_id))).scalars())

        return await self._chain_ids.get_or_load("all", load)

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
_timezones: TTLCache[str, ZoneInfo] = TTLCache(_TIMEZONE_CACHE_SECONDS)


def zone_named(name: str | None) -> ZoneInfo:
    """A chain's zone by its IANA name; none, or a name this machine does not know, is Asia/Shanghai."""
    try:
        return ZoneInfo(name) if name else DEFAULT_TIMEZONE
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("unknown time zone for chain; using Asia/Shanghai", extra={"timezone": name})
        return DEFAULT_TIMEZONE


async def chain_timezone(conn: AsyncSession | AsyncConnection, chain_id: str) -> ZoneInfo:
    """The chain's time zone: its days, months, tier-years, birthdays and quiet hours are local.
    The one lookup every service uses, cached per process for a minute."""

    async def load() -> ZoneInfo:
        return zone_named(await conn.scalar(select(chains.c.timezone).where(chains.c.chain_id == chain_id)))

    return await _timezones.get_or_load(chain_id, load)

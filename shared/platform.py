"""The platform schema: chains and their API keys, shared by all five services.

A key (``platform.keys``) belongs to one chain, has scopes, optionally a clinic it is bound
to and an expiry. Its secrets (``platform.key_secrets``) are stored as SHA-256 hashes (they
are random 32-byte secrets, so a slow hash adds nothing); a key has one secret, two during
a rotation's grace period. Every service authenticates requests against them and reads a
chain's time zone and webhook from ``platform.chains``.

Scopes: ``pos`` and ``app`` for the systems that call the APIs, ``ops`` for a chain's IT
operations (everything within its chain), ``platform`` above ``ops`` (onboarding chains).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ARRAY, Column, DateTime, ForeignKey, Index, MetaData, Table, Text, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from .cache import TTLCache
from .secret_box import SecretBox, UnsealError

log = logging.getLogger(__name__)

SCHEMA = "platform"
SCOPES = ("pos", "app", "ops", "platform")

metadata = MetaData(schema=SCHEMA)

chains = Table(
    "chains",
    metadata,
    Column("chain_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("timezone", Text, nullable=False, server_default="Asia/Shanghai"),
    Column("webhook_url", Text),
    #: sealed with MEMBERSHIP_SECRETS_KEY (shared.secret_box, ``v1:...``), the chain id as associated data
    Column("webhook_secret", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

keys = Table(
    "keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("chain_id", Text, ForeignKey("platform.chains.chain_id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("clinic_id", Text),
    Column("prefix", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("created_by", Text),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    Index("keys_chain", "chain_id", "created_at"),
)

key_secrets = Table(
    "key_secrets",
    metadata,
    Column("key_hash", Text, primary_key=True),
    Column("key_id", Text, ForeignKey("platform.keys.key_id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    #: NULL while the secret is the key's current one; set when a rotation replaces it (the grace period)
    Column("valid_until", DateTime(timezone=True)),
    Index("key_secrets_key", "key_id"),
)


#: the members' data keys, wrapped under their chain's KEK; deleting a row shreds the member's sealed data
member_keys = Table(
    "member_keys",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("chain_id", Text, nullable=False),
    Column("wrapped_key", Text, nullable=False),
    Column("kek_version", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("member_keys_chain", "chain_id"),
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
    #: set when the stored secret does not open with MEMBERSHIP_SECRETS_KEY: webhooks fail, never go unsigned
    webhook_secret_error: str | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key of one chain, with its scopes, maybe bound to one clinic."""

    chain_id: str
    scopes: frozenset[str]
    key_name: str
    key_id: str = ""
    clinic_id: str | None = None

    def allows(self, scope: str) -> bool:
        """``platform`` may do everything, ``ops`` everything within its chain but ``platform``'s part."""
        if "platform" in self.scopes or scope in self.scopes:
            return True
        return "ops" in self.scopes and scope != "platform"

    @property
    def is_ops(self) -> bool:
        return self.allows("ops")

    def may_act_for_clinic(self, clinic_id: str) -> bool:
        """A key bound to a clinic acts for that clinic only."""
        return self.clinic_id is None or self.clinic_id == clinic_id


class KnownSecrets:
    """The hashes of every stored secret, so a guessed key is refused without a query of its own.

    A hash absent from the snapshot is absent from the database as of the snapshot; since a key may have
    been added since (by another process), the caller waits for a snapshot begun after it asked. Snapshots
    begin at most once per ``reload_seconds`` and are shared by everyone waiting, so a flood of guesses
    costs one query per ``reload_seconds`` whatever its size, and a new key works at its first use (after
    at most that wait). Revoked and expired keys stay in the snapshot until deleted; their own lookup,
    cached in :class:`PlatformStore`, refuses them."""

    def __init__(
        self, engine: AsyncEngine, reload_seconds: float = 1.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.engine = engine
        self.reload_seconds = reload_seconds
        self.clock = clock
        self._hashes: frozenset[str] = frozenset()
        self._began = float("-inf")  # when the snapshot held now began
        self._next: asyncio.Task[None] | None = None
        self.reloads = 0

    async def may_exist(self, key_hash: str) -> bool:
        if key_hash in self._hashes:
            return True
        asked = self.clock()
        while self._began < asked:
            if self._next is None or self._next.done():
                self._next = asyncio.create_task(self._reload())
            task = self._next
            try:
                await asyncio.shield(task)
            finally:
                if task.done() and not task.cancelled() and task.exception() is not None and self._next is task:
                    self._next = None  # a failed reload is retried by the next caller
        return key_hash in self._hashes

    async def _reload(self) -> None:
        wait = self._began + self.reload_seconds - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        began = self.clock()
        async with self.engine.connect() as conn:
            hashes = frozenset((await conn.execute(select(key_secrets.c.key_hash))).scalars())
        self.reloads += 1
        self._hashes, self._began = hashes, began

    def forget(self) -> None:
        """This process stored a secret: the next unknown hash reloads at once."""
        self._began = float("-inf")


class PlatformStore:
    """Looks keys and chains up, with a short cache so auth costs no query per request, and a snapshot of
    the known secrets so a guessed key costs none either (:class:`KnownSecrets`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        cache_seconds: float = 5.0,
        unknown_reload_seconds: float = 1.0,
        *,
        box: SecretBox | None = None,
    ) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self.known = KnownSecrets(engine, unknown_reload_seconds)
        #: opens the chains' sealed webhook secrets
        self.box = box or SecretBox.development()
        self._keys: TTLCache[str, Principal | None] = TTLCache(cache_seconds)
        self._chains: TTLCache[str, Chain | None] = TTLCache(cache_seconds)
        self._chain_ids: TTLCache[str, tuple[str, ...]] = TTLCache(cache_seconds)

    async def principal(self, key: str) -> Principal | None:
        """The key's principal, None when the secret is unknown, revoked, expired or past its rotation's
        grace. Cached for ``cache_seconds``: a revocation takes effect on every service within that."""

        async def load() -> Principal | None:
            now = func.now()
            async with self.engine.begin() as conn:
                row = (
                    await conn.execute(
                        select(keys.c.key_id, keys.c.chain_id, keys.c.scopes, keys.c.name, keys.c.clinic_id)
                        .join(key_secrets, key_secrets.c.key_id == keys.c.key_id)
                        .where(
                            key_secrets.c.key_hash == h,
                            keys.c.revoked_at.is_(None),
                            or_(keys.c.expires_at.is_(None), keys.c.expires_at > now),
                            or_(key_secrets.c.valid_until.is_(None), key_secrets.c.valid_until > now),
                        )
                    )
                ).first()
                if row is not None:  # at most one write per key and minute, whatever the traffic
                    await conn.execute(
                        update(keys)
                        .where(
                            keys.c.key_id == row.key_id,
                            or_(keys.c.last_used_at.is_(None), keys.c.last_used_at < now - timedelta(minutes=1)),
                        )
                        .values(last_used_at=now)
                    )
            if row is None:
                return None
            return Principal(row.chain_id, frozenset(row.scopes), row.name, row.key_id, row.clinic_id)

        h = hash_key(key)
        if not await self.known.may_exist(h):
            return None
        return await self._keys.get_or_load(h, load)

    async def chain(self, chain_id: str) -> Chain | None:
        async def load() -> Chain | None:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(chains).where(chains.c.chain_id == chain_id))).first()
            return self._chain_of(row) if row else None

        return await self._chains.get_or_load(chain_id, load)

    async def timezone(self, chain_id: str) -> ZoneInfo:
        """The chain's time zone (see :func:`chain_timezone`)."""
        async with self.engine.connect() as conn:
            return await chain_timezone(conn, chain_id)

    def forget_keys(self) -> None:
        """Drop cached keys (this process changed one; the others see it within ``cache_seconds``)."""
        self._keys.invalidate()
        self.known.forget()

    def forget_chain(self, chain_id: str) -> None:
        self._chains.invalidate(chain_id)
        self._chain_ids.invalidate()
        _timezones.invalidate(chain_id)

    async def chain_ids(self) -> tuple[str, ...]:
        """Every chain's id (what a scheduled job runs for), cached like keys."""

        async def load() -> tuple[str, ...]:
            async with self.engine.connect() as conn:
                return tuple((await conn.execute(select(chains.c.chain_id).order_by(chains.c.chain_id))).scalars())

        return await self._chain_ids.get_or_load("all", load)

    async def all_chains(self) -> list[Chain]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(chains))).all()
        return [self._chain_of(r) for r in rows]

    def _chain_of(self, row: Any) -> Chain:
        """The chain with its webhook secret opened. One that does not open (another key, tampered with)
        is reported in ``webhook_secret_error``: its webhooks then fail rather than go out unsigned."""
        if not row.webhook_secret:
            return Chain(row.chain_id, row.name, row.timezone, row.webhook_url, None)
        try:
            secret = self.box.open(row.webhook_secret, context=row.chain_id)
        except UnsealError as exc:
            log.error("a chain's webhook secret does not open", extra={"chain_id": row.chain_id})
            return Chain(row.chain_id, row.name, row.timezone, row.webhook_url, None, webhook_secret_error=str(exc))
        return Chain(row.chain_id, row.name, row.timezone, row.webhook_url, secret)


async def upsert_chain(
    engine: AsyncEngine,
    chain_id: str,
    name: str,
    *,
    timezone: str = "Asia/Shanghai",
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    box: SecretBox | None = None,
) -> None:
    """Create or replace a chain. A webhook secret is stored sealed with ``box`` (required with one)."""
    sealed = None
    if webhook_secret is not None:
        if box is None:
            raise ValueError("a webhook secret is stored sealed: pass the SecretBox of MEMBERSHIP_SECRETS_KEY")
        sealed = box.seal(webhook_secret, context=chain_id)
    values = dict(chain_id=chain_id, name=name, timezone=timezone, webhook_url=webhook_url, webhook_secret=sealed)
    async with engine.begin() as conn:
        await conn.execute(
            pg_insert(chains)
            .values(**values)
            .on_conflict_do_update(
                index_elements=["chain_id"], set_={k: v for k, v in values.items() if k != "chain_id"}
            )
        )


def new_secret() -> str:
    return "mk_" + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def prefix_of(secret: str) -> str:
    """What a listing shows of a secret: enough to tell keys apart, too little to use."""
    return secret[:7]


async def insert_key(
    conn: AsyncConnection,
    chain_id: str,
    scopes: list[str],
    *,
    name: str,
    secret: str | None = None,
    key_id: str | None = None,
    clinic_id: str | None = None,
    expires_at: datetime | None = None,
    created_by: str | None = None,
) -> tuple[str, str]:
    """Store a new key and its secret (hashed) in the caller's transaction; returns (key_id, secret), the
    only time the secret is shown. A secret already stored is left as it is: re-seeding a fixed
    development key never un-revokes or changes it."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"unknown scopes {sorted(unknown)}" if unknown else "a key needs at least one scope")
    secret = secret or new_secret()
    h = hash_key(secret)
    known = await conn.scalar(select(key_secrets.c.key_id).where(key_secrets.c.key_hash == h))
    if known is not None:
        return known, secret
    key_id = key_id or new_key_id()
    await conn.execute(
        keys.insert().values(
            key_id=key_id,
            chain_id=chain_id,
            name=name,
            scopes=scopes,
            clinic_id=clinic_id,
            prefix=prefix_of(secret),
            expires_at=expires_at,
            created_by=created_by,
        )
    )
    await conn.execute(key_secrets.insert().values(key_hash=h, key_id=key_id))
    return key_id, secret


async def add_api_key(
    engine: AsyncEngine,
    chain_id: str,
    scopes: list[str],
    *,
    name: str,
    key: str | None = None,
    clinic_id: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Store a key (hashed) and return its secret in the clear: the only time it is shown."""
    async with engine.begin() as conn:
        _, secret = await insert_key(
            conn, chain_id, scopes, name=name, secret=key, clinic_id=clinic_id, expires_at=expires_at
        )
    return secret


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

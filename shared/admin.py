"""Platform administration (SPEC §7): chains and their API keys, served by enrollment.

``platform`` keys create and change chains (and may manage any chain's keys, which is how a
new chain gets its first ``ops`` key); ``ops`` keys manage their own chain's keys. A secret is
shown once, when created or rotated; listings show its first characters only. Every change is
in the audit log. Revocation reaches every service within the key cache's lifetime
(``MEMBERSHIP_API_KEY_CACHE_SECONDS``, 5 s by default).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import AnyHttpUrl, BaseModel, Field, field_validator
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from .api import CtxDep, OpsKey, current_correlation_id, require
from .audit import record_audit
from .db import UnitOfWork
from .platform import SCOPES, Principal, chains, insert_key, key_secrets, keys, new_secret, prefix_of, zone_named
from .platform import hash_key as _hash
from .problems import Conflict, Forbidden, InvalidRequest, NotFound
from .schemas import Strict

PlatformKey = Annotated[Principal, Depends(require("platform"))]
CHAIN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _known_zone(name: str) -> str:
    if zone_named(name).key != name:
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)")
    return name


class ChainCreate(Strict):
    chain_id: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field("Asia/Shanghai", max_length=64)
    webhook_url: AnyHttpUrl | None = None

    @field_validator("chain_id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not CHAIN_ID.match(v):
            raise ValueError("lower-case letters, digits and '-', starting with a letter or digit")
        return v

    _zone = field_validator("timezone")(_known_zone)


class ChainPatch(Strict):
    name: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(None, max_length=64)
    webhook_url: AnyHttpUrl | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else _known_zone(v)


class ChainView(BaseModel):
    chain_id: str
    name: str
    timezone: str
    webhook_url: str | None
    created_at: datetime


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=4)
    clinic_id: str | None = Field(None, min_length=1, max_length=100)
    expires_at: datetime | None = None
    #: platform keys only: the chain the key is for (default: the caller's)
    chain_id: str | None = Field(None, max_length=63)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(SCOPES))
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
        return sorted(set(v))

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expires_at must carry a UTC offset")
        return v


class RotateRequest(Strict):
    #: how long the old secret keeps working (default: MEMBERSHIP_KEY_ROTATION_GRACE_SECONDS, 24 h)
    grace_seconds: int | None = Field(None, ge=0, le=30 * 24 * 3600)


class KeyView(BaseModel):
    key_id: str
    chain_id: str
    name: str
    prefix: str
    scopes: list[str]
    clinic_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyList(BaseModel):
    items: list[KeyView]


class CreatedKey(KeyView):
    #: the secret: shown this once, never again
    key: str


class RotatedKey(CreatedKey):
    #: until when the previous secret keeps working
    previous_valid_until: datetime


def _chain_view(row: Any) -> ChainView:
    return ChainView(
        chain_id=row.chain_id,
        name=row.name,
        timezone=row.timezone,
        webhook_url=row.webhook_url,
        created_at=row.created_at,
    )


def _key_view(row: Any) -> KeyView:
    return KeyView(
        key_id=row.key_id,
        chain_id=row.chain_id,
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),
        clinic_id=row.clinic_id,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


async def _conn(uow: UnitOfWork) -> AsyncConnection:
    return await uow.session.connection()


def _visible_chain(principal: Principal, chain_id: str) -> None:
    """A chain other than one's own does not exist for an ops key (404, never its data)."""
    if chain_id != principal.chain_id and not principal.allows("platform"):
        raise NotFound("No such chain.")


async def _key_of(uow: UnitOfWork, principal: Principal, key_id: str) -> Any:
    row = (await uow.execute(select(keys).where(keys.c.key_id == key_id).with_for_update())).first()
    if row is None or (row.chain_id != principal.chain_id and not principal.allows("platform")):
        raise NotFound("No such key.")
    return row


def admin_router() -> APIRouter:
    router = APIRouter(tags=["platform administration"])

    @router.post("/v1/chains", status_code=201, response_model=ChainView)
    async def create_chain(body: ChainCreate, ctx: CtxDep, principal: PlatformKey) -> ChainView:
        """Onboard a chain (platform keys); 409 if the id is taken. Its first ops key: POST /v1/keys."""
        async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
            row = (
                await uow.execute(
                    pg_insert(chains)
                    .values(
                        chain_id=body.chain_id,
                        name=body.name,
                        timezone=body.timezone,
                        webhook_url=str(body.webhook_url) if body.webhook_url else None,
                    )
                    .on_conflict_do_nothing()
                    .returning(*chains.c)
                )
            ).first()
            if row is None:
                raise Conflict("A chain with this id exists.", chain_id=body.chain_id)
            view = _chain_view(row)
            await record_audit(
                uow,
                principal,
                action="chain.create",
                target=f"chain:{body.chain_id}",
                after=view,
                chain_id=body.chain_id,
            )
        return view

    @router.get("/v1/chains/{chain_id}", response_model=ChainView)
    async def get_chain(chain_id: str, ctx: CtxDep, principal: OpsKey) -> ChainView:
        """A chain: one's own (ops), any (platform)."""
        _visible_chain(principal, chain_id)
        async with ctx.db.unit_of_work() as uow:
            row = (await uow.execute(select(chains).where(chains.c.chain_id == chain_id))).first()
        if row is None:
            raise NotFound("No such chain.")
        return _chain_view(row)

    @router.patch("/v1/chains/{chain_id}", response_model=ChainView)
    async def patch_chain(chain_id: str, body: ChainPatch, ctx: CtxDep, principal: PlatformKey) -> ChainView:
        """Change a chain's name, time zone or webhook (platform keys)."""
        changes = body.model_dump(exclude_unset=True, mode="json")
        if any(v is None for k, v in changes.items() if k != "webhook_url"):
            raise InvalidRequest("name and timezone cannot be null.")
        async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
            before = (await uow.execute(select(chains).where(chains.c.chain_id == chain_id).with_for_update())).first()
            if before is None:
                raise NotFound("No such chain.")
            after = before
            if changes:
                after = (
                    await uow.execute(
                        update(chains).where(chains.c.chain_id == chain_id).values(**changes).returning(*chains.c)
                    )
                ).one()
                await record_audit(
                    uow,
                    principal,
                    action="chain.update",
                    target=f"chain:{chain_id}",
                    before=_chain_view(before),
                    after=_chain_view(after),
                    chain_id=chain_id,
                )
        ctx.platform.forget_chain(chain_id)
        return _chain_view(after)

    @router.post("/v1/keys", status_code=201, response_model=CreatedKey)
    async def create_key(body: KeyCreate, ctx: CtxDep, principal: OpsKey) -> CreatedKey:
        """A new key of one's chain (or, with a platform key, of ``chain_id``); the secret is shown once."""
        chain_id = body.chain_id or principal.chain_id
        _visible_chain(principal, chain_id)
        if "platform" in body.scopes and not principal.allows("platform"):
            raise Forbidden("Only a platform key may create platform keys.")
        async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
            if await uow.session.scalar(select(chains.c.chain_id).where(chains.c.chain_id == chain_id)) is None:
                raise NotFound("No such chain.")
            key_id, secret = await insert_key(
                await _conn(uow),
                chain_id,
                body.scopes,
                name=body.name,
                clinic_id=body.clinic_id,
                expires_at=body.expires_at,
                created_by=principal.key_id,
            )
            row = (await uow.execute(select(keys).where(keys.c.key_id == key_id))).one()
            view = _key_view(row)
            await record_audit(
                uow, principal, action="key.create", target=f"key:{key_id}", after=view, chain_id=chain_id
            )
        return CreatedKey(**view.model_dump(), key=secret)

    @router.get("/v1/keys", response_model=KeyList)
    async def list_keys(
        ctx: CtxDep,
        principal: OpsKey,
        chain_id: Annotated[str | None, Query(max_length=63)] = None,
        include_revoked: bool = True,
    ) -> KeyList:
        """The chain's keys, newest first; no secrets."""
        chain_id = chain_id or principal.chain_id
        _visible_chain(principal, chain_id)
        stmt = select(keys).where(keys.c.chain_id == chain_id)
        if not include_revoked:
            stmt = stmt.where(keys.c.revoked_at.is_(None))
        async with ctx.db.unit_of_work() as uow:
            rows = (await uow.execute(stmt.order_by(keys.c.created_at.desc(), keys.c.key_id).limit(1000))).all()
        return KeyList(items=[_key_view(r) for r in rows])

    @router.post("/v1/keys/{key_id}/rotate", status_code=201, response_model=RotatedKey)
    async def rotate_key(key_id: str, ctx: CtxDep, principal: OpsKey, body: RotateRequest | None = None) -> RotatedKey:
        """A new secret for the key; the old one keeps working for the grace period, then stops."""
        grace = ctx.settings.key_rotation_grace_seconds
        if body is not None and body.grace_seconds is not None:
            grace = body.grace_seconds
        async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
            row = await _key_of(uow, principal, key_id)
            if row.revoked_at is not None:
                raise Conflict("This key is revoked; create a new one.")
            until = uow.now() + timedelta(seconds=grace)
            # every earlier secret works until the grace period ends at the latest: a rotation with no
            # grace (a leaked secret) ends all of them at once, an earlier rotation's ends no later
            await uow.execute(
                update(key_secrets)
                .where(key_secrets.c.key_id == key_id)
                .values(valid_until=func.least(func.coalesce(key_secrets.c.valid_until, until), until))
            )
            secret = new_secret()
            await uow.execute(key_secrets.insert().values(key_hash=_hash(secret), key_id=key_id))
            after = (
                await uow.execute(
                    update(keys).where(keys.c.key_id == key_id).values(prefix=prefix_of(secret)).returning(*keys.c)
                )
            ).one()
            await record_audit(
                uow,
                principal,
                action="key.rotate",
                target=f"key:{key_id}",
                before=_key_view(row),
                after={**_key_view(after).model_dump(mode="json"), "previous_valid_until": until.isoformat()},
                chain_id=row.chain_id,
            )
        ctx.platform.forget_keys()
        return RotatedKey(**_key_view(after).model_dump(), key=secret, previous_valid_until=until)

    @router.delete("/v1/keys/{key_id}", status_code=204)
    async def revoke_key(key_id: str, ctx: CtxDep, principal: OpsKey) -> Response:
        """Revoke a key at once: every secret of it stops working (on every service within seconds)."""
        async with ctx.db.unit_of_work(correlation_id=current_correlation_id()) as uow:
            row = await _key_of(uow, principal, key_id)
            if row.revoked_at is None:
                after = (
                    await uow.execute(
                        update(keys).where(keys.c.key_id == key_id).values(revoked_at=uow.now()).returning(*keys.c)
                    )
                ).one()
                await record_audit(
                    uow,
                    principal,
                    action="key.revoke",
                    target=f"key:{key_id}",
                    before=_key_view(row),
                    after=_key_view(after),
                    chain_id=row.chain_id,
                )
        ctx.platform.forget_keys()
        return Response(status_code=204)

    return router

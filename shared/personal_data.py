"""Personal data (SPEC §8): contact details sealed per member, data keys that can be destroyed, and the
export every service serves.

**Crypto-shredding.** Each member has a random AES-256 *data key*. Enrollment seals the member's contact
details (name, phone, email) with it (AES-GCM, the member id as associated data) before they go into an
event, so topics, dead letters and outbox rows only ever hold the ciphertext. The data key itself never
travels on a topic: it lives in ``platform.member_keys`` (the schema every service already reads),
written by enrollment only, *wrapped* (AES-GCM) under the chain's key-encryption key. Notify, the one
consumer that needs the contact details, reads the wrapped key there and unwraps it. Erasure deletes the
row: from then on no copy of the sealed details anywhere (topics, dead letters, backups of any schema
but the erased rows) can be opened, whatever secrets survive. (Why not put the wrapped key in the
event: docs/decisions/0035.)

**Key-encryption keys.** One master secret (``MEMBERSHIP_PII_MASTER_KEY``, from the secret store)
derives each chain's KEK with HKDF-SHA256 (info ``membership/kek/v1/<chain_id>``): onboarding a chain
needs no new secret, and a chain's wrapped keys are useless under another chain's KEK.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel
from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from .api import CtxDep, OpsKey
from .crypto import KEK_VERSION, Keyring, new_data_key
from .db import UnitOfWork
from .platform import member_keys
from .problems import NotFound

# ---- the data keys' table -----------------------------------------------------------------------


def keyring_of(uow: UnitOfWork) -> Keyring:
    """The unit of work's keyring (every service's Database has one, from the settings)."""
    if uow.keyring is None:
        raise RuntimeError("this unit of work has no keyring")
    return uow.keyring


async def create_data_key(session: AsyncSession, keyring: Keyring, *, chain_id: str, member_id: str) -> bytes:
    """A new member's data key, stored wrapped (in the caller's transaction: it commits with the member)."""
    data_key = new_data_key()
    await session.execute(
        pg_insert(member_keys).values(
            member_id=member_id,
            chain_id=chain_id,
            wrapped_key=keyring.wrap(data_key, chain_id=chain_id, member_id=member_id),
            kek_version=KEK_VERSION,
        )
    )
    return data_key


async def data_key_of(
    conn: AsyncSession | AsyncConnection, keyring: Keyring, *, chain_id: str, member_id: str
) -> bytes | None:
    """The member's data key; None once it was destroyed (the member was erased) or never existed."""
    wrapped = await conn.scalar(
        select(member_keys.c.wrapped_key).where(
            member_keys.c.member_id == member_id, member_keys.c.chain_id == chain_id
        )
    )
    if wrapped is None:
        return None
    return keyring.unwrap(wrapped, chain_id=chain_id, member_id=member_id)


async def destroy_data_key(session: AsyncSession, *, chain_id: str, member_id: str) -> bool:
    """Shred the member's data key: whatever was sealed with it can never be opened again."""
    result = await session.execute(
        delete(member_keys)
        .where(member_keys.c.member_id == member_id, member_keys.c.chain_id == chain_id)
        .returning(member_keys.c.member_id)
    )
    return result.first() is not None


# ---- export (SPEC §8 access) --------------------------------------------------------------------


@dataclass(frozen=True)
class MemberRows:
    """One table's rows about a member: ``table`` where ``column`` is the member id."""

    name: str
    table: Table
    column: str = "member_id"


@dataclass(frozen=True)
class ExportSource:
    """What a service holds on members: ``anchor`` (a table with ``member_id`` and ``chain_id``) says the
    member is the caller's chain's; ``rows`` are exported with every column."""

    anchor: Table
    rows: Sequence[MemberRows]
    #: columns never exported (secrets, hashes of requests)
    omit: frozenset[str] = frozenset({"request_hash"})


class MemberExport(BaseModel):
    member_id: str
    service: str
    exported_at: datetime
    data: dict[str, list[dict[str, Any]]]


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value


async def export_member(
    conn: AsyncSession, source: ExportSource, *, service: str, chain_id: str, member_id: str, now: datetime
) -> MemberExport:
    """Every row the service holds on the member, by table; another chain's (or no) member: 404."""
    anchor = source.anchor
    found = await conn.scalar(
        select(anchor.c.member_id).where(anchor.c.member_id == member_id, anchor.c.chain_id == chain_id)
    )
    if found is None:
        raise NotFound("No such member.")
    data: dict[str, list[dict[str, Any]]] = {}
    for part in source.rows:
        rows = (await conn.execute(select(part.table).where(part.table.c[part.column] == member_id))).mappings()
        data[part.name] = [{k: jsonable(v) for k, v in row.items() if k not in source.omit} for row in rows]
    return MemberExport(member_id=member_id, service=service, exported_at=now, data=data)


MemberIdPath = Annotated[str, Path(min_length=1, max_length=100)]


def export_router(service: str, source: ExportSource) -> APIRouter:
    """``GET /v1/members/{member_id}/export`` (ops): all the service holds on the member."""
    router = APIRouter(prefix="/v1", tags=["personal data"])

    @router.get("/members/{member_id}/export", response_model=MemberExport)
    async def export(member_id: MemberIdPath, ctx: CtxDep, principal: OpsKey) -> MemberExport:
        """All this service holds on the member (SPEC §8 access), by table."""
        async with ctx.db.unit_of_work() as uow:
            return await export_member(
                uow.session, source, service=service, chain_id=principal.chain_id, member_id=member_id, now=uow.now()
            )

    return router

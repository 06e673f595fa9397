"""Migration 0006 of enrollment on a database with data: every written form of a phone becomes E.164, two
members holding two forms of one number are both kept (the later with its old form), unreadable numbers
stay, and consents a bug stored as JSON null become "no consent"."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devstack.stack import Stack
from shared.migrate import _config, migrations_of, upgrade
from shared.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def at_0005(stack: Stack) -> AsyncIterator[Settings]:
    base = stack.settings()
    name = f"phones_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base.database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base.database_url).set(database=name).render_as_string(hide_password=False)
    settings = base.model_copy(update={"database_url": url})
    try:
        await asyncio.to_thread(upgrade, settings, ["platform"])
        await asyncio.to_thread(command.upgrade, _config(migrations_of("enrollment"), settings), "0005")
        yield settings
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


ROWS = [  # member_id, chain, phone as stored before, enrolled (order), consents
    ("m-national", "a", "13800000001", 1, '{"marketing": true, "sms": true, "email": false}'),
    ("m-0086", "a", "008613800000002", 2, '{"marketing": false, "sms": true, "email": false}'),
    ("m-e164", "a", "+8613800000003", 3, '{"marketing": false, "sms": false, "email": false}'),
    ("m-first", "a", "13800000004", 4, '{"marketing": false, "sms": false, "email": false}'),
    ("m-second", "a", "008613800000004", 5, '{"marketing": false, "sms": false, "email": false}'),
    ("m-other-chain", "b", "13800000004", 6, "null"),
    ("m-uk", "a", "00442079460958", 7, '{"marketing": false, "sms": false, "email": false}'),
    ("m-odd", "a", "000012", 8, '{"marketing": false, "sms": false, "email": false}'),
]


async def test_phones_become_e164_without_merging_or_losing_members(at_0005: Settings) -> None:
    engine = create_async_engine(at_0005.database_url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            for member_id, chain, phone, n, consents in ROWS:
                await conn.execute(
                    text(
                        "INSERT INTO enrollment.members (member_id, chain_id, member_no, phone, name, birthday,"
                        " home_clinic_id, source, referral_code, consents, enrolled_at)"
                        " VALUES (:m, :c, :no, :p, 'x', '1990-01-01', 'c', 'walk_in', :code, CAST(:consents AS jsonb),"
                        " now() + make_interval(secs => :n))"
                    ),
                    {
                        "m": member_id,
                        "c": chain,
                        "no": f"M{n}",
                        "p": phone,
                        "code": f"R{n}",
                        "n": n,
                        "consents": consents,
                    },
                )
        await asyncio.to_thread(upgrade, at_0005, ["enrollment"])
        async with engine.connect() as conn:
            rows = {
                r.member_id: r
                for r in await conn.execute(text("SELECT member_id, phone, consents FROM enrollment.members"))
            }
    finally:
        await engine.dispose()
    assert {m: r.phone for m, r in rows.items()} == {
        "m-national": "+8613800000001",
        "m-0086": "+8613800000002",
        "m-e164": "+8613800000003",
        "m-first": "+8613800000004",
        "m-second": "008613800000004",  # the same number as m-first: kept as it was, for an operator
        "m-other-chain": "+8613800000004",  # another chain's member may hold it
        "m-uk": "+442079460958",
        "m-odd": "000012",  # no number in any form: left alone
    }
    assert rows["m-other-chain"].consents == {"marketing": False, "sms": False, "email": False}
    assert rows["m-national"].consents == {"marketing": True, "sms": True, "email": False}

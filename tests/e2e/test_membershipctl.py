"""The operations plane as a chain's IT team uses it: ``membershipctl`` run as a command, against the
suite's running platform. Bootstrap on an empty database, onboarding a second chain, keys created,
bound to a clinic, rotated and revoked (refused by all five services), the audit trail, and status."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import asyncpg
import pytest

from shared.settings import SERVICES
from tests.helpers import OPS, POS, Api, eventually, purchase_body

pytestmark = pytest.mark.e2e

#: a read every service answers for its own chain's key, to see a key accepted or refused everywhere
PROBES = {
    "enrollment": "/v1/audit",
    "points": "/v1/audit",
    "tiering": "/v1/audit",
    "benefits": "/v1/audit",
    "notify": "/v1/audit",
}


def _environ(stack: Any, key: str | None, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user's shell pointed at the suite's stack (nothing of the suite's own)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEMBERSHIP_")}
    for s in SERVICES:
        environ[f"MEMBERSHIP_URL_{s.upper()}"] = stack.url(s)
        environ[f"MEMBERSHIP_WORKER_URL_{s.upper()}"] = f"http://127.0.0.1:{stack.worker_ports[s]}"
    if key is not None:
        environ["MEMBERSHIP_KEY"] = key
    environ.update(env or {})
    return environ


def ctl(
    stack: Any, *args: str, key: str | None = OPS, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``membershipctl ARGS`` as a user runs it, pointed at the suite's stack."""
    return subprocess.run(
        [sys.executable, "-m", "membershipctl", *args],
        env=_environ(stack, key, env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def ctl_json(stack: Any, *args: str, key: str | None = OPS) -> Any:
    done = ctl(stack, "--json", *args, key=key)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def _accepted_everywhere(api: Api, key: str) -> dict[str, int]:
    return {s: api.get(s, path, key=key).status_code for s, path in PROBES.items()}


def test_bootstrap_creates_the_first_chain_and_key_once_on_an_empty_database(stack: Any) -> None:
    name = f"bootstrap_{uuid.uuid4().hex[:8]}"
    admin_dsn = stack.settings().asyncpg_dsn

    async def sql(dsn: str, statement: str, *args: Any) -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    asyncio.run(sql(admin_dsn, f'CREATE DATABASE "{name}"'))
    fresh = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    env = {"MEMBERSHIP_DATABASE_URL": fresh}
    try:
        first = ctl(
            stack,
            "--json",
            "bootstrap",
            "--chain-id",
            "acme",
            "--name",
            "Acme Clinics",
            "--timezone",
            "America/Los_Angeles",
            key=None,
            env=env,
        )
        assert first.returncode == 0, first.stderr
        created = json.loads(first.stdout)
        assert created["chain_id"] == "acme" and created["key"].startswith("mk_") and created["key_id"]
        rows = asyncio.run(sql(fresh, "SELECT chain_id, timezone FROM platform.chains"))
        assert [(r["chain_id"], r["timezone"]) for r in rows] == [("acme", "America/Los_Angeles")]
        keys = asyncio.run(sql(fresh, "SELECT key_id, scopes, prefix FROM platform.keys"))
        assert [(k["key_id"], sorted(k["scopes"])) for k in keys] == [(created["key_id"], ["ops", "platform"])]
        # the secret is stored only as its hash
        secrets = asyncio.run(sql(fresh, "SELECT key_hash FROM platform.key_secrets"))
        assert created["key"] not in {s["key_hash"] for s in secrets} and len(secrets) == 1

        again = ctl(stack, "bootstrap", "--chain-id", "other", "--name", "Other", key=None, env=env)
        assert again.returncode == 1 and "already has keys" in again.stderr
        bad = ctl(stack, "bootstrap", "--chain-id", "x", "--name", "X", "--timezone", "Mars/Olympus", key=None, env=env)
        assert bad.returncode == 2 and "time zone" in bad.stderr
        assert len(asyncio.run(sql(fresh, "SELECT 1 FROM platform.chains"))) == 1
    finally:
        asyncio.run(sql(admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_a_key_is_created_used_rotated_and_revoked_on_every_service(api: Api, stack: Any) -> None:
    created = ctl_json(stack, "keys", "create", "--name", "ops-helper", "--scope", "ops")
    secret, key_id = created["key"], created["key_id"]
    assert created["prefix"] == secret[:7] and created["scopes"] == ["ops"]
    assert all(code == 200 for code in _accepted_everywhere(api, secret).values())

    listed = ctl_json(stack, "keys", "list")["items"]
    [mine] = [k for k in listed if k["key_id"] == key_id]
    assert "key" not in mine and mine["prefix"] == secret[:7] and mine["last_used_at"] is not None
    assert secret not in json.dumps(listed)

    # rotation: the new secret works at once, the old one during its grace period only
    rotated = ctl_json(stack, "keys", "rotate", key_id, "--grace-seconds", "3600")
    new = rotated["key"]
    assert new != secret and api.get("points", "/v1/audit", key=new).status_code == 200
    assert api.get("points", "/v1/audit", key=secret).status_code == 200
    ctl_json(stack, "keys", "rotate", key_id, "--grace-seconds", "0")
    assert api.get("points", "/v1/audit", key=secret).status_code == 401

    newest = ctl_json(stack, "keys", "list")["items"]
    assert next(k for k in newest if k["key_id"] == key_id)["revoked_at"] is None
    done = ctl(stack, "keys", "revoke", key_id)
    assert done.returncode == 0, done.stderr
    refused = _accepted_everywhere(api, new)
    assert refused == dict.fromkeys(SERVICES, 401), refused
    r = api.get("enrollment", "/v1/keys", key=new)
    assert r.status_code == 401 and "ops-helper" not in r.text

    # and the trail names the operator who did each
    trail = ctl_json(stack, "audit", "--since", "1h", "--service", "enrollment")
    actions = [(e["action"], e["target"]) for e in trail if e["target"] == f"key:{key_id}"]
    assert actions == [
        ("key.create", f"key:{key_id}"),
        ("key.rotate", f"key:{key_id}"),
        ("key.rotate", f"key:{key_id}"),
        ("key.revoke", f"key:{key_id}"),
    ]
    assert {e["actor_name"] for e in trail if e["target"] == f"key:{key_id}"} == {"demo-ops"}


def test_a_pos_key_bound_to_a_clinic_posts_only_that_clinics_purchases(api: Api, stack: Any) -> None:
    bound = ctl_json(stack, "keys", "create", "--name", "pos clinic-7", "--scope", "pos", "--clinic-id", "clinic-7")
    mid = api.enrol()["member_id"]
    ok = api.post("enrollment", "/v1/purchases", purchase_body(mid, 10_000, clinic_id="clinic-7"), key=bound["key"])
    assert ok.status_code == 202, ok.text
    other = api.post("enrollment", "/v1/purchases", purchase_body(mid, 10_000, clinic_id="clinic-8"), key=bound["key"])
    assert other.status_code == 403 and other.headers["content-type"].startswith("application/problem+json")
    # nothing was recorded for the refused one: the unbound POS key sees one purchase's points only
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points", key=POS).json()["balance"] > 0)
    ledger = api.get("points", f"/v1/members/{mid}/points/ledger", key=POS).json()["items"]
    assert len(ledger) == 1


def test_an_ops_key_cannot_do_platform_work_nor_mint_platform_keys(stack: Any) -> None:
    chains = ctl(stack, "chains", "create", "rogue", "--name", "Rogue")
    assert chains.returncode == 4 and "403" in chains.stderr
    minted = ctl(stack, "keys", "create", "--name", "escalate", "--scope", "platform")
    assert minted.returncode == 4 and "403" in minted.stderr
    other = ctl(stack, "keys", "list", "--chain-id", "some-other-chain")
    assert other.returncode == 1 and "404" in other.stderr


def test_a_platform_key_onboards_a_second_chain_whose_keys_see_only_it(api: Api, stack: Any) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from shared.platform import add_api_key

    async def platform_key() -> str:
        engine = create_async_engine(stack.postgres.url)
        try:
            return await add_api_key(engine, "demo-chain", ["platform"], name="platform-team")
        finally:
            await engine.dispose()

    platform = asyncio.run(platform_key())
    chain_id = f"second-{uuid.uuid4().hex[:6]}"
    chain = ctl_json(
        stack, "chains", "create", chain_id, "--name", "Second Clinics", "--timezone", "Asia/Tokyo", key=platform
    )
    assert chain["timezone"] == "Asia/Tokyo"
    first = ctl_json(
        stack, "keys", "create", "--name", "second-ops", "--scope", "ops", "--chain-id", chain_id, key=platform
    )
    assert first["chain_id"] == chain_id
    mine = ctl_json(stack, "keys", "list", key=first["key"])["items"]
    assert [k["key_id"] for k in mine] == [first["key_id"]]
    assert ctl(stack, "chains", "show", "demo-chain", key=first["key"]).returncode == 1
    mid = api.enrol()["member_id"]  # a demo-chain member
    assert api.get("points", f"/v1/members/{mid}/points", key=first["key"]).status_code == 404
    renamed = ctl_json(stack, "chains", "update", chain_id, "--name", "Second Clinics Ltd", key=platform)
    assert renamed["name"] == "Second Clinics Ltd"
    trail = ctl_json(stack, "audit", "--action", "chain.create", key=first["key"])
    assert [e["target"] for e in trail] == [f"chain:{chain_id}"] and trail[0]["actor_name"] == "platform-team"


def test_status_shows_every_service_up_with_its_pipeline_numbers(stack: Any) -> None:
    rows = ctl_json(stack, "status")
    assert [r["service"] for r in rows] == list(SERVICES)
    for r in rows:
        assert r["api_up"] and r["worker_up"], r
        assert r["outbox_backlog"] is not None and r["dead_letters_parked"] is not None
    consumers = {r["service"]: r["consumer_lag"] for r in rows}
    assert set(consumers["points"]) >= {"membership.enrollment"}
    table = ctl(stack, "status")
    assert table.returncode == 0 and "membership pipeline" in table.stdout and "points" in table.stdout


def test_a_status_with_a_service_down_exits_3(stack: Any) -> None:
    done = ctl(stack, "status", env={"MEMBERSHIP_URL_NOTIFY": "http://127.0.0.1:9"})
    assert done.returncode == 3 and "DOWN" in done.stdout

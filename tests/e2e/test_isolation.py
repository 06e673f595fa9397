"""Chains are isolated: another chain's key sees none of a member's data in any service."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from shared.platform import add_api_key, upsert_chain
from tests.helpers import Api, eventually, is_problem

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def other_chain_key(stack) -> str:  # noqa: ANN001
    async def go() -> str:
        engine = create_async_engine(stack.postgres.url)
        try:
            await upsert_chain(engine, "other-chain", "Other Clinics")
            return await add_api_key(engine, "other-chain", ["pos", "app", "ops"], name="other-all")
        finally:
            await engine.dispose()

    return asyncio.run(go())


READS = [
    ("enrollment", "/v1/members/{m}"),
    ("enrollment", "/v1/members/{m}/status"),
    ("points", "/v1/members/{m}/points"),
    ("points", "/v1/members/{m}/points/ledger"),
    ("tiering", "/v1/members/{m}/tier"),
    ("tiering", "/v1/members/{m}/tier/history"),
    ("benefits", "/v1/members/{m}/benefits"),
    ("benefits", "/v1/members/{m}/discount"),
    ("notify", "/v1/members/{m}/notifications"),
]


def test_another_chains_key_gets_404_from_every_service(api: Api, other_chain_key: str) -> None:
    mid = api.enrol()["member_id"]
    # wait until every service knows the member, so a 404 is isolation and not lag
    for service, path in READS:
        eventually(lambda: api.get(service, path.format(m=mid)).status_code == 200)
    for service, path in READS:
        r = api.get(service, path.format(m=mid), key=other_chain_key)
        assert set(is_problem(r, 404)) <= {"type", "title", "status", "detail", "instance"}
    r = api.post("points", f"/v1/members/{mid}/points/redemptions", {"points": 1, "reason": "x"},
                 key=other_chain_key)
    is_problem(r, 404)
    found = api.get("enrollment", "/v1/members", key=other_chain_key, params={"phone": "139" + "0" * 8})
    assert found.status_code == 200 and found.json()["items"] == []

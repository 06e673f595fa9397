"""Chains are isolated: another chain's key sees none of a member's data in any service."""

from __future__ import annotations

import pytest

from tests.helpers import Api, eventually, is_problem

pytestmark = pytest.mark.e2e


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
        eventually(lambda s=service, p=path: api.get(s, p.format(m=mid)).status_code == 200)
    for service, path in READS:
        r = api.get(service, path.format(m=mid), key=other_chain_key)
        assert set(is_problem(r, 404)) <= {"type", "title", "status", "detail", "instance"}
    r = api.post("points", f"/v1/members/{mid}/points/redemptions", {"points": 1, "reason": "x"}, key=other_chain_key)
    is_problem(r, 404)
    found = api.get("enrollment", "/v1/members", key=other_chain_key, params={"phone": "139" + "0" * 8})
    assert found.status_code == 200 and found.json()["items"] == []

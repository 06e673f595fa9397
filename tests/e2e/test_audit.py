"""The audit trail: every kind of change an operator makes is recorded by the service that made it,
with the operator's key, before/after and the request's correlation id, and `membershipctl audit`
merges the five services' trails in time order."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.e2e.test_membershipctl import ctl_json
from tests.helpers import OPS, Api, eventually

pytestmark = pytest.mark.e2e


def _entries(api: Api, service: str, action: str) -> list[dict[str, Any]]:
    r = api.get(service, "/v1/audit", key=OPS, params={"action": action})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def test_each_kind_of_operator_change_is_audited_with_its_actor_and_request(
    api: Api, stack: Any, other_chain_key: str
) -> None:
    mid = api.enrol()["member_id"]
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points", key=OPS).status_code == 200)
    eventually(lambda: api.get("tiering", f"/v1/members/{mid}/tier", key=OPS).status_code == 200)
    cid = f"audit-{uuid.uuid4().hex[:8]}"

    adjusted = api.post(
        "points",
        f"/v1/members/{mid}/points/adjustments",
        {"delta": 120, "reason": "goodwill"},
        key=OPS,
        headers={"X-Correlation-Id": cid},
    )
    assert adjusted.status_code == 201, adjusted.text
    [adjust] = [e for e in _entries(api, "points", "points.adjust") if e["target"] == f"member:{mid}"]
    assert adjust["actor_name"] == "demo-ops" and adjust["correlation_id"] == cid
    assert adjust["before"] == {"balance": 0} and adjust["after"]["balance"] == 120
    assert adjust["after"]["reason"] == "goodwill"

    override = api.post("tiering", f"/v1/members/{mid}/tier/override", {"to_tier": "gold", "reason": "VIP"}, key=OPS)
    assert override.status_code == 200, override.text
    [over] = [e for e in _entries(api, "tiering", "tier.override") if e["target"] == f"member:{mid}"]
    assert over["before"]["tier"] == "member" and over["after"]["tier"] == "gold"

    policy = api.get("tiering", "/v1/policy", key=OPS).json()
    policy["tiers"][1]["spend_fen"] += 100
    stored = api.put("tiering", "/v1/policy", policy, key=OPS)
    assert stored.status_code == 200, stored.text
    [update] = [
        e for e in _entries(api, "tiering", "policy.update") if e["target"] == f"policy:v{stored.json()['version']}"
    ]
    assert update["before"]["version"] == stored.json()["version"] - 1
    assert update["after"]["tiers"][1]["spend_fen"] == policy["tiers"][1]["spend_fen"]

    recalc = api.post("tiering", "/v1/policy/recalculate", key=OPS)
    assert recalc.status_code == 202, recalc.text
    assert any(
        e["target"] == f"recalculation:{recalc.json()['job_id']}"
        for e in _entries(api, "tiering", "policy.recalculate")
    )

    for service, path, action in (
        ("tiering", "/v1/reviews/run", "reviews.run"),
        ("points", "/v1/points/expiry/run", "expiry.run"),
        ("enrollment", "/v1/referrals/run", "referrals.run"),
        ("benefits", "/v1/benefits/schedules/run", "schedules.run"),
    ):
        before = len(_entries(api, service, action))
        r = api.post(service, path, key=OPS)
        assert r.status_code == 200, r.text
        runs = _entries(api, service, action)
        assert len(runs) == before + 1 and runs[-1]["after"]["as_of"] == r.json()["as_of"]

    # merged across services, oldest first; another chain sees none of it
    merged = ctl_json(stack, "audit", "--since", "1h")
    assert [e["at"] for e in merged] == sorted(e["at"] for e in merged)
    assert {"points.adjust", "tier.override", "policy.update", "expiry.run", "referrals.run"} <= {
        e["action"] for e in merged
    }
    assert ctl_json(stack, "audit", key=other_chain_key) == []
    # an app key may not read the trail
    assert api.get("points", "/v1/audit").status_code == 403

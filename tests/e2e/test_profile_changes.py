"""Profile changes reach every service: a removed email is never mailed again (issue 8)."""

from __future__ import annotations

import pytest

from tests.helpers import APP, Api, eventually

pytestmark = pytest.mark.e2e


def _channels(api: Api, member_id: str, kind: str) -> set[str]:
    items = api.get("notify", f"/v1/members/{member_id}/notifications", key=APP).json()["items"]
    return {n["channel"] for n in items if n["kind"] == kind}


def test_an_email_removed_by_patch_is_never_mailed_again(api: Api) -> None:
    member = api.enrol(email="old-address@example.com", consents={"marketing": False, "sms": False, "email": True})
    mid = member["member_id"]
    eventually(lambda: "email" in _channels(api, mid, "welcome"))  # the address is on file and used

    r = api.patch("enrollment", f"/v1/members/{mid}", {"email": None})
    assert r.status_code == 200 and r.json()["email"] is None

    api.purchase(mid, 6_000_000)  # 60,000 yuan: silver, and a tier_up notification
    eventually(lambda: "webhook" in _channels(api, mid, "tier_up"), timeout=60)
    assert "email" not in _channels(api, mid, "tier_up")
    # a consent change afterwards does not bring the old address back
    r = api.patch("enrollment", f"/v1/members/{mid}", {"consents": {"marketing": True, "sms": False, "email": True}})
    assert r.status_code == 200
    api.purchase(mid, 20_000_000)  # 260,000 yuan in all: gold, a second tier_up
    # gold at least (double points in the first 30 days may reach diamond too: one tier_up each)
    eventually(lambda: _count(api, mid, "tier_up", "webhook") >= 2, timeout=60)
    assert "email" not in _channels(api, mid, "tier_up")


def _count(api: Api, member_id: str, kind: str, channel: str) -> int:
    items = api.get("notify", f"/v1/members/{member_id}/notifications", key=APP).json()["items"]
    return sum(1 for n in items if n["kind"] == kind and n["channel"] == channel)

"""Notify's API contract: validation, auth and chain isolation."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.stack import Stack
from shared.platform import add_api_key, upsert_chain
from tests.helpers import APP, OPS, POS, Api, eventually, is_problem

# this service's consumers on their own (with enrollment's intake): other services' reactions to the
# same events would otherwise change what is asserted. The e2e tests run all five together.
pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment", "notify")]


def known_member(api: Api) -> str:
    member_id = api.enrol()["member_id"]
    eventually(lambda: api.get("notify", f"/v1/members/{member_id}/preferences").status_code == 200)
    return member_id


def other_chains_key(stack: Stack) -> str:
    async def go() -> str:
        engine = create_async_engine(stack.postgres.url)
        try:
            await upsert_chain(engine, "other-chain", "Other Clinics")
            return await add_api_key(engine, "other-chain", ["app", "pos"], name="other-app")
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_a_member_starts_with_the_default_preferences(api: Api) -> None:
    member_id = known_member(api)
    r = api.get("notify", f"/v1/members/{member_id}/preferences", key=OPS)
    assert r.json() == {
        "member_id": member_id,
        "channels": ["webhook", "sms", "email"],
        "locale": "zh-CN",
        "quiet_hours": {"start": "22:00", "end": "08:00"},
    }


def test_invalid_preferences_are_a_problem_and_change_nothing(api: Api) -> None:
    member_id = known_member(api)
    path = f"/v1/members/{member_id}/preferences"
    before = api.get("notify", path).json()
    for body in (
        {"channels": ["fax"], "locale": "en"},
        {"channels": ["sms"], "locale": "fr"},
        {"channels": ["sms", "sms"], "locale": "en"},
        {"channels": ["sms"], "locale": "en", "quiet_hours": {"start": "25:00", "end": "08:00"}},
        {"channels": ["sms"], "locale": "en", "quiet_hours": {"start": "08:00", "end": "08:00"}},
        {"channels": ["sms"], "locale": "en", "colour": "red"},
        {"locale": "en"},
    ):
        doc = is_problem(api.put("notify", path, body), 422)
        assert doc["errors"], body
    assert api.get("notify", path).json() == before


def test_null_quiet_hours_means_none_and_an_empty_channel_list_is_allowed(api: Api) -> None:
    member_id = known_member(api)
    r = api.put(
        "notify", f"/v1/members/{member_id}/preferences", {"channels": [], "locale": "zh-CN", "quiet_hours": None}
    )
    assert r.status_code == 200, r.text
    assert r.json()["quiet_hours"] is None and r.json()["channels"] == []


def test_an_unknown_or_another_chains_member_is_not_found(api: Api, stack: Stack) -> None:
    member_id = known_member(api)
    stranger = other_chains_key(stack)
    prefs = {"channels": ["sms"], "locale": "en"}
    for mid, key in ((str(uuid.uuid4()), APP), (member_id, stranger)):
        is_problem(api.get("notify", f"/v1/members/{mid}/notifications", key=key), 404)
        is_problem(api.get("notify", f"/v1/members/{mid}/preferences", key=key), 404)
        is_problem(api.put("notify", f"/v1/members/{mid}/preferences", prefs, key=key), 404)
    assert api.get("notify", f"/v1/members/{member_id}/preferences").json()["locale"] == "zh-CN"


def test_auth_needs_a_known_key_of_the_right_scope(api: Api) -> None:
    member_id = known_member(api)
    is_problem(api.get("notify", f"/v1/members/{member_id}/notifications", key=None), 401)
    is_problem(api.get("notify", f"/v1/members/{member_id}/notifications", key="nope"), 401)
    assert api.get("notify", f"/v1/members/{member_id}/notifications", key=POS).status_code == 200
    is_problem(
        api.put("notify", f"/v1/members/{member_id}/preferences", {"channels": ["sms"], "locale": "en"}, key=POS), 403
    )

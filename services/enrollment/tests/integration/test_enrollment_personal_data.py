"""Enrollment and personal data (SPEC §8) through its HTTP API, on the real PostgreSQL: the guardian's
consent, the consent history, treatment details kept only with consent, the export, and erasure
(each protection attacked: wrong keys, other chains, repeats, the erased member's id reused)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date
from typing import Any

import asyncpg
import pytest

from devstack.stack import Stack
from shared.phones import normalize_phone
from tests.helpers import APP, OPS, POS, Api, is_problem, purchase_body

pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment")]


def unique_phone() -> str:
    return "137" + str(uuid.uuid4().int)[:8]


def enrolment(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "phone": unique_phone(),
        "name": "测试会员",
        "birthday": "1990-06-15",
        "home_clinic_id": "clinic-1",
        "source": "walk_in",
        "consents": {"marketing": True, "sms": True, "email": False},
    }
    body.update(overrides)
    return body


def query(stack: Stack, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(stack.settings().asyncpg_dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


# ---- guardian consent ---------------------------------------------------------------------------


def test_a_member_under_14_is_enrolled_only_with_a_guardians_consent(api: Api) -> None:
    ten_years_ago = date.today().replace(year=date.today().year - 10, day=1).isoformat()
    body = enrolment(birthday=ten_years_ago)
    for refused in (body, {**body, "guardian_consent": False}):
        doc = is_problem(api.post("enrollment", "/v1/members", refused, key=APP), 422)
        assert doc["errors"][0]["location"] == ["body", "guardian_consent"]
    assert api.get("enrollment", "/v1/members", key=POS, params={"phone": body["phone"]}).json()["items"] == []
    assert is_problem(api.post("enrollment", "/v1/members", {**body, "guardian_consent": "yes"}, key=APP), 422)

    created = api.post("enrollment", "/v1/members", {**body, "guardian_consent": True}, key=APP)
    assert created.status_code == 201, created.text
    history = api.get("enrollment", f"/v1/members/{created.json()['member_id']}/consents", key=APP).json()
    assert {"purpose": "guardian", "granted": True} in [
        {"purpose": r["purpose"], "granted": r["granted"]} for r in history["items"]
    ]


# ---- consent history ----------------------------------------------------------------------------


def test_consents_are_a_history_of_grants_and_withdrawals(api: Api, other_chain_key: str) -> None:
    mid = api.enrol(consents={"marketing": True, "sms": True, "email": False})["member_id"]
    r = api.patch(
        "enrollment",
        f"/v1/members/{mid}",
        {
            "consents": {"marketing": False, "sms": True, "email": False, "sensitive_data": True},
            "consent_source": "clinic",
            "privacy_policy_version": "2026-11",
        },
        key=APP,
    )
    assert r.status_code == 200, r.text
    doc = api.get("enrollment", f"/v1/members/{mid}/consents", key=APP).json()
    rows = [(i["purpose"], i["granted"], i["source"], i["policy_version"]) for i in doc["items"]]
    assert rows == [
        ("marketing", True, "app", "1"),
        ("sms", True, "app", "1"),
        ("email", False, "app", "1"),
        ("sensitive_data", False, "app", "1"),
        ("marketing", False, "clinic", "2026-11"),
        ("sensitive_data", True, "clinic", "2026-11"),
    ]
    assert doc["consents"] == {"marketing": False, "sms": True, "email": False, "sensitive_data": True}
    # a consent not sent keeps its answer: only the explicit withdrawal goes into the history
    api.patch("enrollment", f"/v1/members/{mid}", {"consents": {"sms": False}}, key=OPS)
    doc = api.get("enrollment", f"/v1/members/{mid}/consents", key=POS).json()
    assert [(i["purpose"], i["granted"]) for i in doc["items"][6:]] == [("sms", False)]
    assert doc["consents"] == {"marketing": False, "sms": False, "email": False, "sensitive_data": True}
    # another chain's key sees nothing; no key is 401; bad input changes nothing
    is_problem(api.get("enrollment", f"/v1/members/{mid}/consents", key=other_chain_key), 404)
    is_problem(api.get("enrollment", f"/v1/members/{mid}/consents", key=None), 401)
    before = api.get("enrollment", f"/v1/members/{mid}/consents", key=APP).json()
    for bad in (
        {"consents": {"sms": "maybe"}},
        {"consents": {"telepathy": True}},
        {"consents": {"sms": True}, "consent_source": "street"},
        {"consents": {"sms": True}, "privacy_policy_version": "x" * 41},
        {"consents": {"sms": True}, "privacy_policy_version": "1; DROP TABLE"},
    ):
        is_problem(api.patch("enrollment", f"/v1/members/{mid}", bad, key=APP), 422)
    assert api.get("enrollment", f"/v1/members/{mid}/consents", key=APP).json() == before


def test_treatment_details_are_kept_only_with_the_sensitive_data_consent(api: Api) -> None:
    without = api.enrol()["member_id"]
    with_consent = api.enrol(consents={"sensitive_data": True})["member_id"]
    api.purchase(without, 10_000)
    api.purchase(with_consent, 10_000)

    def items(mid: str) -> list[dict[str, Any]]:
        purchases = api.get("enrollment", f"/v1/members/{mid}/export", key=OPS).json()["data"]["purchases"]
        return [i for p in purchases for i in p["items"]]

    assert items(without) == [{"amount_fen": 10_000, "qty": 1}]
    assert items(with_consent) == [{"sku": "hydrafacial", "category": "skin_care", "amount_fen": 10_000, "qty": 1}]
    # withdrawing the consent strips what was bought off the purchases at once
    r = api.patch("enrollment", f"/v1/members/{with_consent}", {"consents": {"sensitive_data": False}}, key=APP)
    assert r.status_code == 200
    assert items(with_consent) == [{"amount_fen": 10_000, "qty": 1}]


# ---- the wire and the key -----------------------------------------------------------------------


def test_contact_details_leave_enrollment_only_sealed_and_items_not_at_all(api: Api, stack: Stack) -> None:
    phone, email = unique_phone(), f"{uuid.uuid4().hex[:10]}@example.com"
    mid = api.enrol(phone=phone, name="封存测试", email=email, consents={"sensitive_data": True})["member_id"]
    api.patch("enrollment", f"/v1/members/{mid}", {"name": "封存改名", "email": "x" + email}, key=APP)
    api.purchase(mid, 10_000)
    rows = query(stack, "SELECT event_type, payload FROM enrollment.outbox WHERE key = $1", mid)
    assert {r["event_type"] for r in rows} == {"MemberEnrolled", "MemberUpdated", "PurchaseRecorded"}
    for r in rows:
        for secret in (phone, email, "封存", "hydrafacial", "skin_care"):
            assert secret not in r["payload"], (r["event_type"], secret)
    enrolled = json.loads(next(r["payload"] for r in rows if r["event_type"] == "MemberEnrolled"))
    assert enrolled["data"]["contact"]["alg"] == "A256GCM" and enrolled["data"]["phone"] is None
    keys = query(stack, "SELECT wrapped_key FROM platform.member_keys WHERE member_id = $1", mid)
    assert len(keys) == 1 and len(keys[0]["wrapped_key"]) > 40


# ---- export -------------------------------------------------------------------------------------


def test_the_export_holds_everything_on_the_member_for_ops_only(api: Api, other_chain_key: str) -> None:
    phone = unique_phone()
    mid = api.enrol(phone=phone)["member_id"]
    api.purchase(mid, 5_000)
    doc = api.get("enrollment", f"/v1/members/{mid}/export", key=OPS).json()
    assert doc["member_id"] == mid and doc["service"] == "enrollment"
    assert doc["data"]["members"][0]["phone"] == normalize_phone(phone)  # stored in E.164
    assert len(doc["data"]["purchases"]) == 1 and len(doc["data"]["consent_records"]) == 4
    assert "request_hash" not in doc["data"]["purchases"][0]
    is_problem(api.get("enrollment", f"/v1/members/{mid}/export", key=APP), 403)
    is_problem(api.get("enrollment", f"/v1/members/{mid}/export", key=POS), 403)
    is_problem(api.get("enrollment", f"/v1/members/{mid}/export", key=None), 401)
    is_problem(api.get("enrollment", f"/v1/members/{mid}/export", key=other_chain_key), 404)
    is_problem(api.get("enrollment", f"/v1/members/{'x' * 101}/export", key=OPS), 422)
    is_problem(api.get("enrollment", "/v1/members/' OR '1'='1/export", key=OPS), 404)


# ---- erasure ------------------------------------------------------------------------------------


def test_erasure_is_ops_only_and_not_across_chains(api: Api, other_chain_key: str) -> None:
    mid = api.enrol()["member_id"]
    is_problem(api.call("DELETE", "enrollment", f"/v1/members/{mid}", key=APP), 403)
    is_problem(api.call("DELETE", "enrollment", f"/v1/members/{mid}", key=POS), 403)
    is_problem(api.call("DELETE", "enrollment", f"/v1/members/{mid}", key=None), 401)
    is_problem(api.call("DELETE", "enrollment", f"/v1/members/{mid}", key=other_chain_key), 404)
    is_problem(api.call("DELETE", "enrollment", f"/v1/members/{uuid.uuid4()}", key=OPS), 404)
    assert api.get("enrollment", f"/v1/members/{mid}", key=APP).status_code == 200


def test_an_erased_member_is_gone_their_data_key_destroyed_and_their_phone_free(api: Api, stack: Stack) -> None:
    phone = unique_phone()
    mid = api.enrol(phone=phone, name="抹除会员", email="erase-me@example.com", consents={"sensitive_data": True})[
        "member_id"
    ]
    purchase = api.purchase(mid, 20_000)

    r = api.call("DELETE", "enrollment", f"/v1/members/{mid}", key=OPS)
    assert r.status_code == 202, r.text
    assert r.json()["member_id"] == mid and r.json()["status"] == "erased"

    for path in (f"/v1/members/{mid}", f"/v1/members/{mid}/status", f"/v1/members/{mid}/consents"):
        assert is_problem(api.get("enrollment", path, key=OPS), 410)["member_id"] == mid
    is_problem(api.patch("enrollment", f"/v1/members/{mid}", {"name": "回来"}, key=APP), 410)
    is_problem(api.call("DELETE", "enrollment", f"/v1/members/{mid}", key=OPS), 410)
    assert api.get("enrollment", "/v1/members", key=POS, params={"phone": phone}).json()["items"] == []
    # nothing new is recorded for the erased id; financial records stay and a refund still applies
    is_problem(api.post("enrollment", "/v1/purchases", purchase_body(mid, 1_000), key=POS), 422)
    refund = {"refund_id": f"r-{uuid.uuid4()}", "amount_fen": 5_000, "occurred_at": "2026-01-01T00:00:00+00:00"}
    refunded = api.post("enrollment", f"/v1/purchases/{purchase['purchase_id']}/refunds", refund, key=POS)
    assert refunded.status_code in (202, 422), refunded.text  # 422 only if the clock puts it before the purchase

    member = query(stack, "SELECT * FROM enrollment.members WHERE member_id = $1", mid)[0]
    assert (member["phone"], member["name"], member["email"], member["birthday"]) == (None, None, None, None)
    assert member["erased_at"] is not None
    assert query(stack, "SELECT 1 FROM platform.member_keys WHERE member_id = $1", mid) == []
    items = query(stack, "SELECT items::text AS items FROM enrollment.purchases WHERE member_id = $1", mid)
    assert [json.loads(i["items"]) for i in items] == [[{"amount_fen": 20_000, "qty": 1}]]
    erased = query(stack, "SELECT payload FROM enrollment.outbox WHERE key = $1 AND event_type = 'MemberErased'", mid)
    assert len(erased) == 1

    audit = api.get("enrollment", "/v1/audit", key=OPS, params={"action": "member.erase", "target": f"member:{mid}"})
    entries = audit.json()["items"]
    assert len(entries) == 1 and phone not in json.dumps(entries) and "抹除" not in json.dumps(entries)

    again = api.enrol(phone=phone, name="新会员")
    assert again["member_id"] != mid
    found = api.get("enrollment", "/v1/members", key=POS, params={"phone": phone}).json()["items"]
    assert [m["member_id"] for m in found] == [again["member_id"]]

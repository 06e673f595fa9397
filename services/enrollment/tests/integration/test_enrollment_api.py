"""Enrollment through its HTTP API, against the real PostgreSQL and broker."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import APP, OPS, POS, Api, is_problem, purchase_body

pytestmark = [pytest.mark.integration, pytest.mark.services("enrollment")]


def test_enrols_a_member_and_masks_the_phone(api: Api) -> None:
    created = api.enrol(phone="13812345678")
    r = api.get("enrollment", f"/v1/members/{created['member_id']}", key=POS)
    assert r.status_code == 200
    assert r.json()["phone"] == "*******5678"  # the last four digits only
    assert api.get("enrollment", f"/v1/members/{created['member_id']}", key=OPS).json()["phone"] == "+8613812345678"
    found = api.get("enrollment", "/v1/members", key=POS, params={"phone": "13812345678"}).json()["items"]
    assert [m["member_id"] for m in found] == [created["member_id"]]


def test_a_phone_enrolled_twice_is_a_conflict_naming_the_member(api: Api) -> None:
    first = api.enrol(phone="13700001111")
    r = api.post(
        "enrollment",
        "/v1/members",
        {"phone": "13700001111", "name": "again", "birthday": "1991-01-01", "home_clinic_id": "c", "source": "online"},
        key=APP,
    )
    assert is_problem(r, 409)["member_id"] == first["member_id"]


def test_an_invalid_enrolment_is_a_problem_and_stores_nothing(api: Api) -> None:
    r = api.post(
        "enrollment",
        "/v1/members",
        {"phone": "12", "name": "", "birthday": "not-a-date", "home_clinic_id": "c", "source": "tv"},
        key=APP,
    )
    doc = is_problem(r, 422)
    assert {tuple(e["location"][-1:]) for e in doc["errors"]} >= {("phone",), ("birthday",), ("source",)}
    # "000012" is no phone number in any form (E.164 since issue 8): the lookup refuses it rather than find nothing
    is_problem(api.get("enrollment", "/v1/members", key=POS, params={"phone": "000012"}), 422)


def test_the_same_purchase_twice_returns_the_same_id_and_a_changed_body_conflicts(api: Api) -> None:
    member = api.enrol()
    body = purchase_body(member["member_id"], 12_345)
    first = api.post("enrollment", "/v1/purchases", body, key=POS)
    again = api.post("enrollment", "/v1/purchases", body, key=POS)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["purchase_id"] == again.json()["purchase_id"]
    changed = {**body, "amount_fen": 20_000, "items": [{**body["items"][0], "amount_fen": 20_000}]}
    assert (
        is_problem(api.post("enrollment", "/v1/purchases", changed, key=POS), 409)["purchase_id"]
        == first.json()["purchase_id"]
    )


def test_a_purchase_whose_items_do_not_add_up_is_rejected(api: Api) -> None:
    member = api.enrol()
    body = purchase_body(member["member_id"], 10_000)
    body["items"][0]["amount_fen"] = 9_000
    is_problem(api.post("enrollment", "/v1/purchases", body, key=POS), 422)
    body = purchase_body(member["member_id"], 10_000)
    body["member_id"] = str(uuid.uuid4())
    is_problem(api.post("enrollment", "/v1/purchases", body, key=POS), 422)


def test_a_purchase_for_an_unknown_or_another_chains_member_is_rejected_and_stores_nothing(
    api: Api, other_chain_key: str
) -> None:
    theirs = api.post(
        "enrollment",
        "/v1/members",
        {
            "phone": "139" + str(uuid.uuid4().int)[:8],
            "name": "别家会员",
            "birthday": "1990-01-01",
            "home_clinic_id": "c",
            "source": "walk_in",
        },
        key=other_chain_key,
    ).json()["member_id"]
    for member_id in (str(uuid.uuid4()), theirs):
        body = purchase_body(member_id, 10_000)
        doc = is_problem(api.post("enrollment", "/v1/purchases", body, key=POS), 422)
        assert doc["errors"][0]["location"] == ["body", "member_id"]
        # nothing was recorded under that (clinic, pos_txn_id): the same ids for a real member are new
        ours = api.enrol()["member_id"]
        r = api.post("enrollment", "/v1/purchases", {**body, "member_id": ours}, key=POS)
        assert r.status_code == 202, r.text


def test_idempotency_key_replays_the_first_response(api: Api) -> None:
    key = str(uuid.uuid4())
    body = {"phone": "13600002222", "name": "Wang", "birthday": "1985-03-04", "home_clinic_id": "c", "source": "online"}
    first = api.post("enrollment", "/v1/members", body, key=APP, headers={"Idempotency-Key": key})
    second = api.post("enrollment", "/v1/members", body, key=APP, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    other = api.post("enrollment", "/v1/members", {**body, "name": "Zhang"}, key=APP, headers={"Idempotency-Key": key})
    is_problem(other, 409)


def test_auth_needs_a_known_key_of_the_right_scope(api: Api) -> None:
    member = api.enrol()
    is_problem(api.get("enrollment", f"/v1/members/{member['member_id']}", key=None), 401)
    is_problem(api.get("enrollment", f"/v1/members/{member['member_id']}", key="nope"), 401)
    # pos may not enrol; app may not post purchases
    is_problem(api.post("enrollment", "/v1/members", {}, key=POS), 403)
    is_problem(api.post("enrollment", "/v1/purchases", purchase_body(member["member_id"], 100), key=APP), 403)


def _later(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def _refund(
    api: Api, purchase_id: str, amount: int, refund_id: str | None = None, at: str | None = None, **extra: object
):
    body = {
        "refund_id": refund_id or f"r-{uuid.uuid4()}",
        "amount_fen": amount,
        "occurred_at": at or datetime.now(UTC).isoformat(),
        **extra,
    }
    return api.post("enrollment", f"/v1/purchases/{purchase_id}/refunds", body, key=POS)


def test_partial_refunds_are_idempotent_and_never_exceed_the_purchase(api: Api) -> None:
    member = api.enrol()
    pid = api.purchase(member["member_id"], 100_000)["purchase_id"]
    at = datetime.now(UTC).isoformat()
    first = _refund(api, pid, 30_000, refund_id="refund-a", at=at)
    assert first.status_code == 202 and first.json()["remaining_fen"] == 70_000
    again = _refund(api, pid, 30_000, refund_id="refund-a", at=at)
    assert again.status_code == 200 and again.json()["refund_id"] == "refund-a"
    assert again.json()["remaining_fen"] == 70_000  # not refunded twice
    is_problem(_refund(api, pid, 30_001, refund_id="refund-a", at=at), 409)  # same id, other body
    assert is_problem(_refund(api, pid, 70_001), 409)["remaining_fen"] == 70_000
    assert _refund(api, pid, 70_000).json()["remaining_fen"] == 0


def test_refunds_of_unknown_or_another_members_purchases_are_rejected(api: Api, other_chain_key: str) -> None:
    a, b = api.enrol(), api.enrol()
    pid = api.purchase(a["member_id"], 50_000)["purchase_id"]
    is_problem(_refund(api, str(uuid.uuid4()), 100), 404)
    is_problem(_refund(api, pid, 100, member_id=b["member_id"]), 422)
    r = api.post(
        "enrollment",
        f"/v1/purchases/{pid}/refunds",
        {"refund_id": "x", "amount_fen": 100, "occurred_at": datetime.now(UTC).isoformat()},
        key=other_chain_key,
    )
    is_problem(r, 404)


def test_referral_codes_link_referee_to_referrer_and_bad_codes_are_rejected(api: Api, other_chain_key: str) -> None:
    referrer = api.enrol(phone="13511112222")
    referee = api.enrol(referral_code=referrer["referral_code"], source="referral")
    got = api.get("enrollment", f"/v1/members/{referee['member_id']}", key=POS).json()
    assert got["referred_by"] == referrer["member_id"] and got["referral_status"] == "pending"
    base = {"name": "x", "birthday": "1990-01-01", "home_clinic_id": "c", "source": "referral"}
    is_problem(
        api.post("enrollment", "/v1/members", {**base, "phone": "13511113333", "referral_code": "NOPE2345"}, key=APP),
        422,
    )
    self_ref = api.post(
        "enrollment",
        "/v1/members",
        {**base, "phone": "13511112222", "referral_code": referrer["referral_code"]},
        key=APP,
    )
    assert "themselves" in is_problem(self_ref, 422)["detail"]
    foreign = api.post(
        "enrollment",
        "/v1/members",
        {**base, "phone": "13511114444", "referral_code": referrer["referral_code"]},
        key=other_chain_key,
    )
    is_problem(foreign, 422)


def test_a_referral_completes_once_after_the_return_window_unless_refunded_below_the_threshold(api: Api) -> None:
    referrer = api.enrol()
    kept, refunded = (api.enrol(referral_code=referrer["referral_code"]) for _ in range(2))
    api.purchase(kept["member_id"], 120_000)
    small = api.purchase(refunded["member_id"], 120_000)["purchase_id"]
    assert _refund(api, small, 30_000).status_code == 202  # 900 yuan left: below 1,000
    inside_window = api.post("enrollment", "/v1/referrals/run", {"as_of": _later(1)}, key=OPS)
    assert inside_window.status_code == 200

    def status(m: dict) -> str | None:
        return api.get("enrollment", f"/v1/members/{m['member_id']}", key=POS).json()["referral_status"]

    assert (status(kept), status(refunded)) == ("pending", "pending")
    api.post("enrollment", "/v1/referrals/run", {"as_of": _later(8)}, key=OPS)
    api.post("enrollment", "/v1/referrals/run", {"as_of": _later(9)}, key=OPS)
    assert (status(kept), status(refunded)) == ("completed", "pending")
    assert api.get("enrollment", f"/v1/members/{referrer['member_id']}", key=POS).json()["referrals_completed"] == 1
    is_problem(api.post("enrollment", "/v1/referrals/run", {}, key=POS), 403)

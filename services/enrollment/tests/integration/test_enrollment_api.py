"""Enrollment through its HTTP API, against the real PostgreSQL and broker."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import APP, OPS, POS, Api, is_problem, purchase_body

pytestmark = pytest.mark.integration


def test_enrols_a_member_and_masks_the_phone(api: Api) -> None:
    created = api.enrol(phone="13812345678")
    r = api.get("enrollment", f"/v1/members/{created['member_id']}", key=POS)
    assert r.status_code == 200
    assert r.json()["phone"] == "138****5678"
    assert api.get("enrollment", f"/v1/members/{created['member_id']}", key=OPS).json()["phone"] == "13812345678"
    found = api.get("enrollment", "/v1/members", key=POS, params={"phone": "13812345678"}).json()["items"]
    assert [m["member_id"] for m in found] == [created["member_id"]]


def test_a_phone_enrolled_twice_is_a_conflict_naming_the_member(api: Api) -> None:
    first = api.enrol(phone="13700001111")
    r = api.post("enrollment", "/v1/members", {
        "phone": "13700001111", "name": "again", "birthday": "1991-01-01", "home_clinic_id": "c",
        "source": "online"}, key=APP)
    assert is_problem(r, 409)["member_id"] == first["member_id"]


def test_an_invalid_enrolment_is_a_problem_and_stores_nothing(api: Api) -> None:
    r = api.post("enrollment", "/v1/members", {"phone": "12", "name": "", "birthday": "not-a-date",
                                               "home_clinic_id": "c", "source": "tv"}, key=APP)
    doc = is_problem(r, 422)
    assert {tuple(e["location"][-1:]) for e in doc["errors"]} >= {("phone",), ("birthday",), ("source",)}
    assert api.get("enrollment", "/v1/members", key=POS, params={"phone": "000012"}).json()["items"] == []


def test_the_same_purchase_twice_returns_the_same_id_and_a_changed_body_conflicts(api: Api) -> None:
    member = api.enrol()
    body = purchase_body(member["member_id"], 12_345)
    first = api.post("enrollment", "/v1/purchases", body, key=POS)
    again = api.post("enrollment", "/v1/purchases", body, key=POS)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["purchase_id"] == again.json()["purchase_id"]
    changed = {**body, "amount_fen": 20_000, "items": [{**body["items"][0], "amount_fen": 20_000}]}
    assert is_problem(api.post("enrollment", "/v1/purchases", changed, key=POS), 409)["purchase_id"] == \
        first.json()["purchase_id"]


def test_a_purchase_whose_items_do_not_add_up_is_rejected(api: Api) -> None:
    member = api.enrol()
    body = purchase_body(member["member_id"], 10_000)
    body["items"][0]["amount_fen"] = 9_000
    is_problem(api.post("enrollment", "/v1/purchases", body, key=POS), 422)
    body = purchase_body(member["member_id"], 10_000)
    body["member_id"] = str(uuid.uuid4())
    is_problem(api.post("enrollment", "/v1/purchases", body, key=POS), 422)


def test_idempotency_key_replays_the_first_response(api: Api) -> None:
    key = str(uuid.uuid4())
    body = {"phone": "13600002222", "name": "Wang", "birthday": "1985-03-04", "home_clinic_id": "c",
            "source": "online"}
    first = api.post("enrollment", "/v1/members", body, key=APP, headers={"Idempotency-Key": key})
    second = api.post("enrollment", "/v1/members", body, key=APP, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    other = api.post("enrollment", "/v1/members", {**body, "name": "Zhang"}, key=APP,
                     headers={"Idempotency-Key": key})
    is_problem(other, 409)


def test_auth_needs_a_known_key_of_the_right_scope(api: Api) -> None:
    member = api.enrol()
    is_problem(api.get("enrollment", f"/v1/members/{member['member_id']}", key=None), 401)
    is_problem(api.get("enrollment", f"/v1/members/{member['member_id']}", key="nope"), 401)
    # pos may not enrol; app may not post purchases
    is_problem(api.post("enrollment", "/v1/members", {}, key=POS), 403)
    is_problem(api.post("enrollment", "/v1/purchases", purchase_body(member["member_id"], 100), key=APP), 403)

"""The cryptography of personal data (shared.crypto): per-chain KEKs derived from one master key, data
keys wrapped for one chain and member only, contact details sealed for one member only; each
protection attacked."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.crypto import (
    DEV_MASTER_KEY,
    ContactDetails,
    Keyring,
    UnreadableSealedData,
    decode_master_key,
    new_data_key,
    open_contact,
    seal_contact,
)
from shared.events import MemberEnrolled, PurchaseRecorded, SealedContact, decode
from shared.settings import Settings

KEYRING = Keyring.from_base64(DEV_MASTER_KEY)


def test_each_chain_has_its_own_kek_and_the_master_key_decides_them() -> None:
    assert KEYRING.kek("a") != KEYRING.kek("b")
    assert KEYRING.kek("a") == Keyring.from_base64(DEV_MASTER_KEY).kek("a")
    assert Keyring(os.urandom(32)).kek("a") != KEYRING.kek("a")


def test_a_wrapped_data_key_unwraps_for_its_own_chain_and_member_only() -> None:
    data_key = new_data_key()
    wrapped = KEYRING.wrap(data_key, chain_id="a", member_id="m1")
    assert KEYRING.unwrap(wrapped, chain_id="a", member_id="m1") == data_key
    for chain_id, member_id in (("b", "m1"), ("a", "m2")):
        with pytest.raises(UnreadableSealedData):
            KEYRING.unwrap(wrapped, chain_id=chain_id, member_id=member_id)
    with pytest.raises(UnreadableSealedData):  # another master key
        Keyring(os.urandom(32)).unwrap(wrapped, chain_id="a", member_id="m1")


@given(
    name=st.text(max_size=50),
    phone=st.from_regex(r"\+?\d{6,15}", fullmatch=True),
    email=st.none() | st.emails(),
)
def test_sealed_contact_details_open_with_their_key_and_show_nothing_in_clear(
    name: str, phone: str, email: str | None
) -> None:
    key = new_data_key()
    details = ContactDetails(name=name, phone=phone, email=email)
    sealed = seal_contact(key, details, member_id="m1")
    assert open_contact(key, sealed, member_id="m1") == details
    wire = sealed.model_dump_json()
    assert phone not in wire and (not email or email not in wire)
    assert (len(name) < 4 or name not in wire) and (len(name) < 4 or name.encode().hex() not in wire)


def test_sealed_details_do_not_open_with_another_key_member_or_a_flipped_bit() -> None:
    key = new_data_key()
    sealed = seal_contact(key, ContactDetails(name="周女士", phone="13800009999"), member_id="m1")
    with pytest.raises(UnreadableSealedData):
        open_contact(new_data_key(), sealed, member_id="m1")
    with pytest.raises(UnreadableSealedData):
        open_contact(key, sealed, member_id="m2")
    raw = bytearray(base64.b64decode(sealed.ciphertext))
    for i in (0, 12, len(raw) - 1):  # the nonce, the ciphertext, the tag
        forged = bytearray(raw)
        forged[i] ^= 1
        with pytest.raises(UnreadableSealedData):
            open_contact(
                key, SealedContact(key="member:m1", ciphertext=base64.b64encode(forged).decode()), member_id="m1"
            )
    for junk in ("", "!!", base64.b64encode(b"short").decode()):
        with pytest.raises(UnreadableSealedData):
            open_contact(key, SealedContact(key="member:m1", ciphertext=junk), member_id="m1")


def test_the_same_details_seal_differently_each_time() -> None:
    key = new_data_key()
    details = ContactDetails(phone="13800009999")
    assert seal_contact(key, details, member_id="m1") != seal_contact(key, details, member_id="m1")


def test_a_master_key_that_is_not_32_bytes_of_base64_is_refused() -> None:
    for bad in ("", "not base64!", base64.b64encode(b"short").decode(), base64.b64encode(os.urandom(31)).decode()):
        with pytest.raises(ValueError):
            decode_master_key(bad)
        with pytest.raises(ValueError):
            Settings(pii_master_key=bad)
    assert len(decode_master_key(Settings().pii_master_key.get_secret_value())) == 32
    assert DEV_MASTER_KEY not in repr(Settings())  # a secret, never printed


def test_events_of_earlier_versions_still_decode() -> None:
    """Add, never rename: contact details in clear and purchase items are optional, still read."""
    old_enrolment = {
        "specversion": "1.0",
        "id": "e1",
        "source": "membership/enrollment",
        "type": "MemberEnrolled",
        "subject": "m1",
        "chainid": "c",
        "time": "2026-01-01T00:00:00Z",
        "data": {
            "member_id": "m1",
            "member_no": "M1",
            "home_clinic_id": "x",
            "source": "walk_in",
            "birthday": "1990-01-01",
            "enrolled_at": "2026-01-01T00:00:00Z",
            "name": "李女士",
            "phone": "13812345678",
            "consents": {"marketing": True, "sms": True, "email": False},
        },
    }
    e = decode(old_enrolment)
    assert isinstance(e.data, MemberEnrolled) and e.data.phone == "13812345678" and e.data.contact is None
    old_purchase = {
        **old_enrolment,
        "id": "e2",
        "type": "PurchaseRecorded",
        "data": {
            "purchase_id": "p",
            "pos_txn_id": "t",
            "clinic_id": "x",
            "member_id": "m1",
            "amount_fen": 100,
            "occurred_at": "2026-01-01T00:00:00Z",
            "items": [{"sku": "botox", "category": "injectables", "amount_fen": 100, "qty": 1}],
        },
    }
    p = decode(old_purchase)
    assert isinstance(p.data, PurchaseRecorded) and p.data.items[0].sku == "botox"
    del old_purchase["data"]["items"]  # type: ignore[attr-defined]
    assert decode({**old_purchase, "id": "e3"}).data.items == []

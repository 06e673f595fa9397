"""The cryptography of personal data (SPEC §8), without I/O: the chains' key-encryption keys derived
from one master key (HKDF-SHA256), members' data keys wrapped under them, and contact details sealed
with a data key (AES-256-GCM). :mod:`shared.personal_data` keeps the wrapped keys; docs/decisions/0035
says why it is built this way.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict

from .events import SealedContact

#: the development master key (32 zero-free bytes, base64); production configures its own
DEV_MASTER_KEY = base64.b64encode(b"membership-dev-pii-master-key-32").decode()
KEK_VERSION = "hkdf-v1"
NONCE_BYTES = 12


class UnreadableSealedData(ValueError):
    """The ciphertext does not open under this key (wrong key, wrong member, or tampered with)."""


def decode_master_key(value: str) -> bytes:
    """The master key from its base64 form; it must be 32 bytes."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the PII master key must be base64") from exc
    if len(raw) != 32:
        raise ValueError("the PII master key must be 32 bytes (base64 of 32 random bytes)")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnreadableSealedData("not base64") from exc


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return _b64(nonce + AESGCM(key).encrypt(nonce, plaintext, aad))


def _open(key: bytes, sealed: str, aad: bytes) -> bytes:
    raw = _unb64(sealed)
    if len(raw) <= NONCE_BYTES:
        raise UnreadableSealedData("too short")
    try:
        return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise UnreadableSealedData("does not open under this key") from exc


class Keyring:
    """The chains' key-encryption keys, derived from the master key (no I/O)."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._master = master_key
        self._keks: dict[str, bytes] = {}

    @classmethod
    def from_base64(cls, value: str) -> Keyring:
        return cls(decode_master_key(value))

    def kek(self, chain_id: str) -> bytes:
        kek = self._keks.get(chain_id)
        if kek is None:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"membership-pii", info=_kek_info(chain_id))
            kek = self._keks[chain_id] = hkdf.derive(self._master)
        return kek

    def wrap(self, data_key: bytes, *, chain_id: str, member_id: str) -> str:
        return _seal(self.kek(chain_id), data_key, _wrap_aad(chain_id, member_id))

    def unwrap(self, wrapped: str, *, chain_id: str, member_id: str) -> bytes:
        return _open(self.kek(chain_id), wrapped, _wrap_aad(chain_id, member_id))


def _kek_info(chain_id: str) -> bytes:
    return f"membership/kek/v1/{chain_id}".encode()


def _wrap_aad(chain_id: str, member_id: str) -> bytes:
    # a wrapped key opens for its own chain and member only: it cannot be copied onto another member
    return f"membership/data-key/v1/{chain_id}/{member_id}".encode()


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class ContactDetails(BaseModel):
    """A member's contact details in clear: only ever inside a :class:`SealedContact` on the wire."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    name: str | None = None
    phone: str | None = None
    email: str | None = None


def _contact_aad(member_id: str) -> bytes:
    return f"membership/contact/v1/{member_id}".encode()


def seal_contact(data_key: bytes, contact: ContactDetails, *, member_id: str) -> SealedContact:
    plaintext = contact.model_dump_json(exclude_none=True).encode()
    return SealedContact(key=f"member:{member_id}", ciphertext=_seal(data_key, plaintext, _contact_aad(member_id)))


def open_contact(data_key: bytes, sealed: SealedContact, *, member_id: str) -> ContactDetails:
    plaintext = _open(data_key, sealed.ciphertext, _contact_aad(member_id))
    try:
        return ContactDetails.model_validate(json.loads(plaintext))
    except ValueError as exc:
        raise UnreadableSealedData("not a contact") from exc

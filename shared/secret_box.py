"""Secrets the platform keeps in its database (chains' webhook secrets), sealed with AES-256-GCM.

The key is ``MEMBERSHIP_SECRETS_KEY`` (base64 of 32 random bytes: ``python -c "import os, base64;
print(base64.b64encode(os.urandom(32)).decode())"``); production refuses the development default.
A sealed value is ``v1:<base64(nonce | ciphertext | tag)>``, with the row it belongs to (e.g. the
chain id) as associated data, so a sealed value copied into another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .settings import DEVELOPMENT_SECRETS_KEY, Settings

PREFIX = "v1:"
_NONCE_BYTES = 12


class SecretsKeyError(ValueError):
    """MEMBERSHIP_SECRETS_KEY is not base64 of 32 bytes."""


class UnsealError(ValueError):
    """A sealed value does not open with this key (another key, another row, or tampered with)."""


def parse_key(encoded: str) -> bytes:
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretsKeyError("MEMBERSHIP_SECRETS_KEY must be base64 of 32 random bytes") from exc
    if len(key) != 32:
        raise SecretsKeyError(f"MEMBERSHIP_SECRETS_KEY must be 32 bytes (AES-256), not {len(key)}")
    return key


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(parse_key(settings.secrets_key.get_secret_value()))

    @classmethod
    def development(cls) -> SecretBox:
        return cls(parse_key(DEVELOPMENT_SECRETS_KEY))

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, value: str, *, context: str) -> str:
        if not is_sealed(value):
            raise UnsealError("not a sealed value (run the platform migrations to seal stored secrets)")
        try:
            raw = base64.b64decode(value[len(PREFIX) :], validate=True)
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise UnsealError("the sealed value does not open with MEMBERSHIP_SECRETS_KEY") from exc

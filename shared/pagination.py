"""Opaque cursors for the list endpoints: a position (a row's sequence number) under a prefix that
tells one list's cursors from another's. A cursor this API did not return is a 422, not a 500."""

from __future__ import annotations

import base64
import binascii

from .problems import InvalidRequest


def encode_cursor(prefix: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{seq}".encode()).decode().rstrip("=")


def decode_cursor(prefix: str, cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        seq = int(raw.removeprefix(f"{prefix}:")) if raw.startswith(f"{prefix}:") else -1
    except (binascii.Error, UnicodeDecodeError, ValueError):
        seq = -1
    if not 0 < seq < 2**63:
        raise InvalidRequest(
            "The cursor is not one this API returned.",
            errors=[{"location": ["query", "cursor"], "message": "invalid cursor", "type": "value_error"}],
        )
    return seq

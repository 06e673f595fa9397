"""Webhook secrets sealed with AES-256-GCM (shared.secret_box): they open with the key and the row they
were sealed for, and with nothing else."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from shared.platform import Chain, PlatformStore
from shared.secret_box import SecretBox, SecretsKeyError, UnsealError, is_sealed, parse_key
from shared.settings import DEVELOPMENT_WEBHOOK_SECRET, Settings

KEY = base64.b64encode(b"\x01" * 32).decode()
OTHER = base64.b64encode(b"\x02" * 32).decode()


def test_a_sealed_secret_opens_with_its_key_and_row_and_does_not_show_the_secret() -> None:
    box = SecretBox(parse_key(KEY))
    sealed = box.seal(DEVELOPMENT_WEBHOOK_SECRET, context="chain-a")
    assert is_sealed(sealed) and DEVELOPMENT_WEBHOOK_SECRET not in sealed
    assert box.seal(DEVELOPMENT_WEBHOOK_SECRET, context="chain-a") != sealed  # a fresh nonce each time
    assert box.open(sealed, context="chain-a") == DEVELOPMENT_WEBHOOK_SECRET


def test_attacks_on_a_sealed_secret_fail_without_revealing_it() -> None:
    """Another key, the value moved to another chain's row, a flipped byte, a plaintext value planted in
    the column, and garbage: none opens, and no error message carries the secret."""
    box = SecretBox(parse_key(KEY))
    sealed = box.seal("whsec_c2VjcmV0LW9mLWNoYWluLWE=", context="chain-a")
    raw = bytearray(base64.b64decode(sealed[3:]))
    raw[-1] ^= 0x01
    tampered = "v1:" + base64.b64encode(bytes(raw)).decode()
    attempts = [
        (SecretBox(parse_key(OTHER)), sealed, "chain-a"),
        (box, sealed, "chain-b"),
        (box, tampered, "chain-a"),
        (box, "whsec_planted-in-plaintext", "chain-a"),
        (box, "v1:not base64!", "chain-a"),
        (box, "v1:" + base64.b64encode(b"short").decode(), "chain-a"),
    ]
    for opener, value, context in attempts:
        with pytest.raises(UnsealError) as err:
            opener.open(value, context=context)
        assert "c2VjcmV0LW9mLWNoYWluLWE" not in str(err.value)


@pytest.mark.parametrize("bad", ["", "not-base64!", base64.b64encode(b"16-bytes-only!!!").decode()])
def test_a_secrets_key_that_is_not_32_bytes_of_base64_is_refused(bad: str) -> None:
    with pytest.raises(SecretsKeyError):
        SecretBox.from_settings(Settings(secrets_key=bad))


def test_the_platform_store_opens_a_chains_secret_and_refuses_one_that_does_not_open() -> None:
    box = SecretBox(parse_key(KEY))
    store = PlatformStore(engine=None, box=box)  # type: ignore[arg-type]  # no database needed here

    class Row:
        chain_id, name, timezone, webhook_url = "chain-a", "A", "Asia/Shanghai", "https://hooks.example/a"
        webhook_secret: str | None = box.seal("whsec_QUJD", context="chain-a")

    assert store._chain_of(Row()).webhook_secret == "whsec_QUJD"
    Row.webhook_secret = None
    assert store._chain_of(Row()).webhook_secret is None
    Row.webhook_secret = SecretBox(parse_key(OTHER)).seal("whsec_QUJD", context="chain-a")
    chain = store._chain_of(Row())
    assert chain.webhook_secret is None and chain.webhook_secret_error


async def test_a_webhook_whose_secret_does_not_open_fails_instead_of_going_out_unsigned(tmp_path: Path) -> None:
    from notify.channels import DeliveryFailed, JsonlSink, WebhookChannel
    from notify.domain import Notification

    seen: list[httpx.Request] = []
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: seen.append(r) or httpx.Response(200)))
    chain = Chain("c", "C", "Asia/Shanghai", "https://hooks.example/c", None, webhook_secret_error="does not open")
    n = Notification(
        notification_id="n-1",
        member_id="m-1",
        chain_id="c",
        kind="tier_up",
        channel="webhook",
        locale="en",
        title="t",
        body="b",
        data={},
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )
    with pytest.raises(DeliveryFailed, match="unusable"):
        await WebhookChannel(client, JsonlSink(tmp_path)).send(n, None, chain)
    assert seen == []

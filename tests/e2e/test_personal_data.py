"""Personal data (SPEC §8) across the whole platform: a consent withdrawn reaches notify and stops the
channel at once; ``membershipctl member export`` merges what the five services hold; and after an
erasure no trace of the member's phone, name or email is left in clear anywhere the platform writes:
every text, JSON and binary column of every schema, every message of every topic (dead-letter topics
included, decoded, and decrypted with whatever key is still there), and the logs."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devstack.stack import Stack
from shared.crypto import Keyring, UnreadableSealedData, open_contact
from shared.events import MemberEnrolled, MemberUpdated, SealedContact, UndecodableEvent, decode
from shared.phones import normalize_phone
from tests.e2e.test_membershipctl import ctl, ctl_json
from tests.helpers import APP, OPS, Api, WebhookReceiver, eventually, is_problem, publish_events

pytestmark = pytest.mark.e2e


def unique_phone() -> str:
    return "136" + str(uuid.uuid4().int)[:8]


def sms_to(stack: Stack, phone: str) -> list[dict[str, Any]]:
    sink = stack.data_dir / "sink" / "sms.jsonl"
    if not sink.exists():
        return []
    e164 = normalize_phone(phone)  # what the platform stores and sends to
    return [doc for line in sink.read_text().splitlines() if (doc := json.loads(line)).get("to") == e164]


def notifications(api: Api, member_id: str, kind: str) -> list[dict[str, Any]]:
    items = api.get("notify", f"/v1/members/{member_id}/notifications", key=APP).json()["items"]
    return [n for n in items if n["kind"] == kind]


# ---- consent withdrawal -------------------------------------------------------------------------


def test_a_withdrawn_sms_consent_reaches_notify_and_stops_sms_at_once(
    api: Api, stack: Stack, webhook: WebhookReceiver
) -> None:
    phone = unique_phone()
    mid = api.enrol(phone=phone, consents={"marketing": False, "sms": True, "email": False})["member_id"]
    eventually(lambda: {(n["channel"], n["status"]) for n in notifications(api, mid, "welcome")} >= {("sms", "sent")})
    stack.wait_settled()
    texted = len(sms_to(stack, phone))  # the welcome, and the base tier's benefits
    assert texted >= 1

    r = api.patch("enrollment", f"/v1/members/{mid}", {"consents": {"sms": False}}, key=APP)
    assert r.status_code == 200 and r.json()["consents"]["sms"] is False

    def notify_knows() -> bool:
        contacts = api.get("notify", f"/v1/members/{mid}/export", key=OPS).json()["data"]["contacts"]
        return contacts[0]["consents"]["sms"] is False

    eventually(notify_knows)
    api.purchase(mid, 5_000_000)  # past silver: a transactional tier_up, on every consented channel

    def tier_up_sent() -> list[dict[str, Any]]:
        sent = notifications(api, mid, "tier_up")
        assert sent and all(n["status"] == "sent" for n in sent), sent
        return sent

    assert {n["channel"] for n in eventually(tier_up_sent)} == {"webhook"}
    assert any(h["json"]["kind"] == "tier_up" for h in webhook.for_member(mid))
    stack.wait_settled()
    assert len(sms_to(stack, phone)) == texted  # no tier_up, no silver benefit: nothing more by sms
    history = api.get("enrollment", f"/v1/members/{mid}/consents", key=APP).json()["items"]
    assert (history[-1]["purpose"], history[-1]["granted"]) == ("sms", False)


# ---- export -------------------------------------------------------------------------------------


def test_membershipctl_merges_the_five_exports_into_one_document(api: Api, stack: Stack, tmp_path: Path) -> None:
    phone = unique_phone()
    mid = api.enrol(phone=phone, consents={"sms": True})["member_id"]
    api.purchase(mid, 5_000_000)

    def everywhere() -> dict[str, Any]:
        doc = ctl_json(stack, "member", "export", mid)
        assert all(doc["services"][s] is not None for s in doc["services"]), doc["services"]
        assert doc["services"]["tiering"]["tier_history"] and doc["services"]["benefits"]["entitlements"]
        assert doc["services"]["notify"]["notifications"]
        return doc

    doc = eventually(everywhere, timeout=60)
    assert doc["member_id"] == mid and set(doc["services"]) == {"enrollment", "points", "tiering", "benefits", "notify"}
    assert doc["services"]["enrollment"]["members"][0]["phone"] == normalize_phone(phone)
    assert doc["services"]["notify"]["contacts"][0]["phone"] == normalize_phone(phone)
    assert doc["services"]["points"]["entries"][0]["member_id"] == mid

    out = tmp_path / "export.json"
    done = ctl(stack, "member", "export", mid, "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["services"]["enrollment"]["members"][0]["member_id"] == mid
    # refused without ops, and for a member that does not exist
    assert ctl(stack, "member", "export", mid, key=APP).returncode != 0
    unknown = ctl(stack, "member", "export", str(uuid.uuid4()))
    assert unknown.returncode != 0 and "404" in unknown.stderr


# ---- erasure ------------------------------------------------------------------------------------


def text_columns(conn: asyncpg.Connection) -> Any:
    return conn.fetch(
        "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        " AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY')"
    )


async def scan_schemas(dsn: str, needles: list[str]) -> list[str]:
    """Every (schema.table.column, needle) whose value holds a needle, over every text-like column."""
    found = []
    conn = await asyncpg.connect(dsn)
    try:
        for c in await text_columns(conn):
            ident = f'"{c["table_schema"]}"."{c["table_name"]}"'
            col = f'"{c["column_name"]}"'
            for needle in needles:
                if c["data_type"] == "bytea":
                    hit = await conn.fetchval(
                        f"SELECT count(*) FROM {ident} WHERE position(convert_to($1, 'UTF8') IN {col}) > 0", needle
                    )
                else:
                    hit = await conn.fetchval(f"SELECT count(*) FROM {ident} WHERE strpos({col}::text, $1) > 0", needle)
                if hit:
                    found.append(f"{c['table_schema']}.{c['table_name']}.{c['column_name']}: {needle}")
    finally:
        await conn.close()
    return found


async def topic_messages(bootstrap: str) -> list[tuple[str, bytes]]:
    """Every message of every topic, dead-letter topics included, from the beginning."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith("membership."))
        parts = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[tuple[str, bytes]] = []
        pending = {tp for tp in parts if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                out += [(tp.topic, r.value or b"") for r in records]
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()


async def member_key(dsn: str, keyring: Keyring, chain_id: str, member_id: str) -> bytes | None:
    conn = await asyncpg.connect(dsn)
    try:
        wrapped = await conn.fetchval(
            "SELECT wrapped_key FROM platform.member_keys WHERE member_id = $1 AND chain_id = $2", member_id, chain_id
        )
    finally:
        await conn.close()
    return keyring.unwrap(wrapped, chain_id=chain_id, member_id=member_id) if wrapped else None


def opened(stack: Stack, raw: bytes) -> Iterator[str]:
    """The clear text of the sealed contact an enrollment event carries, when its key still exists."""
    try:
        event = decode(raw)
    except UndecodableEvent:
        try:
            doc = json.loads(raw)  # a dead letter whose data does not validate still carries its contact
        except ValueError:
            return  # garbage other tests put on the topics: nothing sealed in it
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
            return
        if doc.get("type") not in ("MemberEnrolled", "MemberUpdated"):
            return
        sealed = doc["data"].get("contact")
        chain_id, member_id = doc.get("chainid"), doc.get("subject")
    else:
        if not isinstance(event.data, MemberEnrolled | MemberUpdated) or event.data.contact is None:
            return
        sealed, chain_id, member_id = event.data.contact.model_dump(), event.chainid, event.subject
    if not sealed:
        return
    settings = stack.settings()
    keyring = Keyring.from_base64(settings.pii_master_key.get_secret_value())
    key = asyncio.run(member_key(settings.asyncpg_dsn, keyring, chain_id, member_id))
    if key is None:
        return
    try:
        yield open_contact(key, SealedContact.model_validate(sealed), member_id=member_id).model_dump_json()
    except UnreadableSealedData:
        return


def scan_topics(stack: Stack, needles: list[str]) -> list[str]:
    found = []
    for topic, raw in asyncio.run(topic_messages(stack.broker.bootstrap)):
        texts = [raw.decode(errors="replace"), *opened(stack, raw)]
        found += [f"{topic}: {n}" for n in needles for t in texts if n in t]
    return found


def scan_logs(stack: Stack, needles: list[str]) -> list[str]:
    logs = [*stack.log_dir.glob("*.log"), *stack.data_dir.glob("*.log")]
    assert any(p.name.startswith("notify-worker") for p in logs)
    return [f"{p.name}: {n}" for p in logs for n in needles if n in p.read_text(errors="replace")]


def test_after_an_erasure_the_members_phone_name_and_email_are_nowhere_in_clear(
    api: Api, stack: Stack, webhook: WebhookReceiver
) -> None:
    tag = uuid.uuid4().hex[:6]
    phone, name, email = unique_phone(), f"抹除{tag}女士", f"erase-{tag}@example.com"
    new_name, new_email = f"改名{tag}", f"renamed-{tag}@example.com"
    needles = [phone, name, email, new_name, new_email]
    needles += [json.dumps(n)[1:-1] for n in (name, new_name)]  # as a JSON writer escaping non-ASCII would write them
    mid = api.enrol(phone=phone, name=name, email=email, consents={"marketing": True, "sms": True, "email": True})[
        "member_id"
    ]
    api.patch("enrollment", f"/v1/members/{mid}", {"name": new_name, "email": new_email}, key=APP)
    api.purchase(mid, 5_000_000)  # tier_up, benefits, points: every service holds something on the member
    eventually(lambda: len(sms_to(stack, phone)) >= 2, timeout=60)  # welcome and tier_up went out by sms
    # a dead letter of the member's own enrolment: the same bytes, broken elsewhere, dead-lettered everywhere
    dsn = stack.settings().asyncpg_dsn

    async def enrolment_payload() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            payload: str = await conn.fetchval(
                "SELECT payload FROM enrollment.outbox WHERE key = $1 AND event_type = 'MemberEnrolled'", mid
            )
            return payload
        finally:
            await conn.close()

    poison = json.loads(asyncio.run(enrolment_payload()))
    poison["id"], poison["data"]["birthday"] = str(uuid.uuid4()), "not a date"
    publish_events(
        stack.broker.bootstrap, [], raw=[("membership.enrollment", mid.encode(), json.dumps(poison).encode())]
    )

    def dead_lettered() -> bool:  # every page: the suite's other modules dead-letter events of this chain too
        params: dict[str, Any] = {"type": "MemberEnrolled", "limit": 200}
        while True:
            page = api.get("notify", "/v1/dead-letters", key=OPS, params=params).json()
            if any(d["event_id"] == poison["id"] for d in page["items"]):
                return True
            if not page.get("next_cursor"):
                return False
            params["cursor"] = page["next_cursor"]

    eventually(dead_lettered, timeout=60)
    stack.wait_settled()

    # the scanners find the member before the erasure (in the tables, and in the topics once decrypted)
    before_db = asyncio.run(scan_schemas(dsn, needles))
    assert any(h.startswith("enrollment.members.phone") for h in before_db), before_db
    assert any(h.startswith("notify.contacts.phone") for h in before_db), before_db
    assert any(h.startswith("notify.notifications.body") for h in before_db), before_db
    before_topics = scan_topics(stack, needles)
    assert any(h.startswith("membership.enrollment: ") and phone in h for h in before_topics), before_topics
    assert any(h.startswith("membership.enrollment.dlq: ") for h in before_topics), before_topics

    r = api.call("DELETE", "enrollment", f"/v1/members/{mid}", key=OPS)
    assert r.status_code == 202, r.text
    stack.wait_settled()
    eventually(
        lambda: api.get("notify", f"/v1/members/{mid}/export", key=OPS).json()["data"]["contacts"][0]["erased_at"]
    )

    assert asyncio.run(scan_schemas(dsn, needles)) == []
    assert scan_topics(stack, needles) == []
    assert scan_logs(stack, needles) == []

    # the profile is gone, financial records stay under the member id, the phone can enrol again
    assert is_problem(api.get("enrollment", f"/v1/members/{mid}", key=OPS), 410)["member_id"] == mid
    export = ctl_json(stack, "member", "export", mid)
    assert export["services"]["enrollment"]["purchases"][0]["amount_fen"] == 5_000_000
    assert export["services"]["points"]["entries"] and export["services"]["tiering"]["tier_history"]
    assert export["services"]["benefits"]["members"][0]["birthday"] is None
    again = api.enrol(phone=phone)
    assert again["member_id"] != mid

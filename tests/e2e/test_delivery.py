"""Delivery guarantees with the real broker: redelivery, a rewound consumer group, a worker
killed with SIGKILL mid-stream, and a poison message on a topic."""

from __future__ import annotations

import asyncio
import signal
import threading
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.events import dlq_of, topic_of
from tests.helpers import APP, Api, eventually, publish_events, purchase_body

pytestmark = pytest.mark.e2e


def _snapshot(api: Api, mid: str) -> dict:
    points = api.get("points", f"/v1/members/{mid}/points", key=APP).json()
    ledger = api.get("points", f"/v1/members/{mid}/points/ledger", key=APP, params={"limit": 200}).json()
    tier = api.get("tiering", f"/v1/members/{mid}/tier", key=APP).json()
    benefits = api.get("benefits", f"/v1/members/{mid}/benefits", key=APP).json()["items"]
    notes = api.get("notify", f"/v1/members/{mid}/notifications", key=APP).json()["items"]
    return {
        "balance": points["balance"],
        "entries": sorted(e["entry_id"] for e in ledger["items"]),
        "tier": (tier["code"], tier["since"], tier["progress"]["spend_fen"], tier["progress"]["points"]),
        "benefits": sorted((b["code"], b["benefit_id"], b["status"]) for b in benefits),
        "notifications": sorted(n["notification_id"] for n in notes),
    }


def _read_topic(bootstrap: str, topic: str, predicate=lambda rec: True, timeout: float = 5.0) -> list:
    async def go() -> list:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
            if not parts:
                await consumer._client.force_metadata_update()
                parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            out = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                if all([(await consumer.position(tp)) >= end[tp] for tp in parts]):
                    break
                batch = await consumer.getmany(timeout_ms=200)
                out += [r for rs in batch.values() for r in rs if predicate(r)]
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def _silver_member(api: Api) -> str:
    mid = api.enrol()["member_id"]
    api.purchase(mid, 2_000_000)
    api.purchase(mid, 3_100_000)
    eventually(lambda: api.get("tiering", f"/v1/members/{mid}/tier", key=APP).json()["code"] == "silver")
    eventually(
        lambda: (
            "annual_skin_check"
            in {b["code"] for b in api.get("benefits", f"/v1/members/{mid}/benefits", key=APP).json()["items"]}
        )
    )
    eventually(
        lambda: (
            len(
                [
                    n
                    for n in api.get("notify", f"/v1/members/{mid}/notifications", key=APP).json()["items"]
                    if n["status"] == "sent"
                ]
            )
            >= 3
        )
    )
    return mid


def test_the_same_events_delivered_again_change_nothing(api: Api, stack) -> None:
    mid = _silver_member(api)
    stack.wait_settled()  # every notification the member's history causes exists before the snapshot
    before = _snapshot(api, mid)
    # every event of this member on every topic, re-sent with the same ids
    records = []
    for service in ("enrollment", "points", "tiering", "benefits"):
        records += _read_topic(stack.broker.bootstrap, topic_of(service), lambda r: r.key == mid.encode())
    assert len(records) >= 6
    publish_events(stack.broker.bootstrap, [], raw=[(r.topic, r.key, r.value) for r in records])
    marker = api.enrol()["member_id"]  # a later event on the same topics, to know the re-sent ones were read
    eventually(lambda: api.get("points", f"/v1/members/{marker}/points", key=APP).status_code == 200)
    eventually(lambda: api.get("benefits", f"/v1/members/{marker}/benefits", key=APP).json()["items"])
    stack.wait_settled()
    assert _snapshot(api, mid) == before


def test_a_rewound_consumer_group_changes_nothing(api: Api, stack) -> None:
    mid = _silver_member(api)
    stack.wait_settled()  # every notification the member's history causes exists before the snapshot
    before = _snapshot(api, mid)
    for service in ("points", "tiering"):
        stack.stop_process(f"{service}-worker")

    async def rewind(group: str, topics: list[str]) -> None:
        """Join the group as its only member (the worker is stopped) and commit offset 0 everywhere."""
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=stack.broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            expected = sum(len(consumer.partitions_for_topic(t) or ()) for t in topics)
            for _ in range(100):
                await consumer.getmany(timeout_ms=200)
                if len(consumer.assignment()) == expected:
                    break
            assert len(consumer.assignment()) == expected
            await consumer.commit({tp: 0 for tp in consumer.assignment()})
        finally:
            await consumer.stop()

    asyncio.run(rewind("membership-points", [topic_of("enrollment")]))
    asyncio.run(rewind("membership-tiering", [topic_of("enrollment"), topic_of("points")]))
    for service in ("points", "tiering"):
        stack.start_process(service, "worker")
    marker = api.enrol()["member_id"]
    api.purchase(marker, 100_000)
    eventually(lambda: api.get("points", f"/v1/members/{marker}/points", key=APP).json()["balance"] == 2_000)
    eventually(
        lambda: api.get("tiering", f"/v1/members/{marker}/tier", key=APP).json()["progress"]["spend_fen"] == 100_000
    )
    stack.wait_settled()
    assert _snapshot(api, mid) == before


def test_sigkilled_workers_lose_and_double_count_nothing(api: Api, stack) -> None:
    members = [api.enrol()["member_id"] for _ in range(5)]
    amounts = [10_000 + 100 * i for i in range(200)]  # 100.00 .. 299.00 yuan
    expected = {m: 0 for m in members}
    errors: list[str] = []

    def post_all() -> None:
        for i, amount in enumerate(amounts):
            m = members[i % len(members)]
            r = api.post("enrollment", "/v1/purchases", purchase_body(m, amount), key="dev-pos-key-0000000000000000")
            if r.status_code != 202:
                errors.append(r.text)
            expected[m] += (amount // 100) * 2  # double points: enrolled just now

    poster = threading.Thread(target=post_all)
    poster.start()
    eventually(
        lambda: (
            len([1 for m in members if api.get("points", f"/v1/members/{m}/points", key=APP).json()["balance"] > 0]) > 0
        ),
        timeout=30,
        interval=0.05,
    )
    stack.stop_process("points-worker", sig=signal.SIGKILL)
    stack.stop_process("enrollment-worker", sig=signal.SIGKILL)  # its outbox relay, mid-stream
    stack.start_process("points", "worker")
    stack.start_process("enrollment", "worker")
    poster.join()
    assert not errors

    def settled() -> bool:
        for m in members:
            assert api.get("points", f"/v1/members/{m}/points", key=APP).json()["balance"] == expected[m]
        return True

    eventually(settled, timeout=60)
    # a double count would show up later than the expected balances: check again once nothing is in flight
    stack.wait_settled()
    settled()
    for m in members:
        ledger = api.get("points", f"/v1/members/{m}/points/ledger", key=APP, params={"limit": 200}).json()
        assert len(ledger["items"]) == len(amounts) // len(members)


def test_a_malformed_message_is_dead_lettered_and_the_events_behind_it_applied(api: Api, stack) -> None:
    mid = api.enrol()["member_id"]
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points", key=APP).status_code == 200)
    poison = b'{"specversion": "1.0", "type": "PurchaseRecorded", "data": {"amount_fen": "lots"}}'
    garbage = b"\xff\xfe not json " + uuid.uuid4().hex.encode()
    publish_events(
        stack.broker.bootstrap,
        [],
        raw=[(topic_of("enrollment"), mid.encode(), poison), (topic_of("enrollment"), mid.encode(), garbage)],
    )
    api.purchase(mid, 50_000)
    eventually(lambda: api.get("points", f"/v1/members/{mid}/points", key=APP).json()["balance"] == 1_000)

    def dead_lettered() -> list:
        recs = _read_topic(stack.broker.bootstrap, dlq_of(topic_of("enrollment")), lambda r: r.key == mid.encode())
        by_group = {(dict(r.headers)["dlq.consumer"], r.value) for r in recs}
        assert (b"membership-points", poison) in by_group and (b"membership-points", garbage) in by_group, by_group
        return recs

    recs = eventually(dead_lettered, timeout=30)
    headers = dict(recs[0].headers)
    assert headers["dlq.error"] and headers["dlq.topic"] == topic_of("enrollment").encode()
    assert int(headers["dlq.offset"]) >= 0

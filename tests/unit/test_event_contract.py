"""The typed event contract: registration by definition, handlers keyed by their signature, what a
consumer does with types it handles, types it does not, and garbage; the in-memory unit of work."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from aiokafka import ConsumerRecord

from shared.cache import MISSING, TTLCache
from shared.consumer import ConsumerRunner, handlers
from shared.db import Unit
from shared.events import (
    EVENT_TYPES,
    ActivityRecorded,
    CloudEvent,
    EventData,
    MemberEnrolled,
    PointsChanged,
    PurchaseRecorded,
    TierProgressChanged,
    decode,
    new_event,
)
from shared.observability import metrics
from shared.settings import Settings
from shared.testing import FakeUnitOfWork, FixedClock, event, handle

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def _activity(member_id: str = "m1") -> ActivityRecorded:
    return ActivityRecorded(activity_id="a1", kind="lecture", clinic_id="c1", occurred_at=NOW, member_id=member_id)


def test_defining_an_event_type_registers_it_and_a_second_of_the_same_name_is_refused() -> None:
    class ProbeHappened(EventData):
        publisher: ClassVar[str] = "points"
        n: int

    try:
        assert EVENT_TYPES["ProbeHappened"] is ProbeHappened
        raw = new_event(ProbeHappened(n=3), member_id="m1", chain_id="c").to_json()
        assert decode(raw).data == ProbeHappened(n=3)
        with pytest.raises(TypeError, match="two event types named ProbeHappened"):

            class ProbeHappened(EventData):  # type: ignore[no-redef]  # the duplicate this test is about
                publisher: ClassVar[str] = "points"
    finally:
        EVENT_TYPES.pop("ProbeHappened", None)
    assert "ProbeHappened" not in EVENT_TYPES


def test_an_event_type_without_a_publisher_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="must say its publisher"):

        class Orphaned(EventData):
            n: int

    assert "Orphaned" not in EVENT_TYPES


def test_shared_bases_are_not_event_types() -> None:
    assert not any(name.startswith("_") for name in EVENT_TYPES)
    assert {"BenefitGranted", "BenefitRedeemed", "BenefitRevoked", "NotificationSent"} <= set(EVENT_TYPES)


def test_an_event_is_typed_by_its_data_and_serialises_every_field() -> None:
    e = new_event(_activity(), member_id="m1", chain_id="c")
    assert type(e) is CloudEvent[ActivityRecorded]
    assert json.loads(e.to_json())["data"]["kind"] == "lecture"
    back = decode(e.to_json())
    assert isinstance(back.data, ActivityRecorded) and back == e


async def _on_activity(event: CloudEvent[ActivityRecorded], uow: Unit) -> None:
    uow.publish(
        PointsChanged(entry_id=event.data.activity_id, delta=5, balance=5, entry_type="earn", reason=event.data.kind),
        member_id=event.subject,
        chain_id=event.chainid,
    )


async def _on_enrolled(event: CloudEvent[MemberEnrolled], uow: Unit) -> None:
    pass


def test_the_handler_table_is_keyed_by_the_event_type_each_signature_names() -> None:
    table = handlers(_on_activity, _on_enrolled)
    assert table == {ActivityRecorded: _on_activity, MemberEnrolled: _on_enrolled}


def test_a_handler_whose_signature_names_no_event_type_is_refused() -> None:
    async def untyped(event, uow):  # type: ignore[no-untyped-def]  # what the check refuses
        pass

    async def bare(event: CloudEvent, uow: Unit) -> None:  # type: ignore[type-arg]  # likewise
        pass

    for fn in (untyped, bare):
        with pytest.raises(TypeError, match="CloudEvent\\[<event type>\\]"):
            handlers(fn)


def test_two_handlers_of_one_type_are_a_mistake() -> None:
    async def again(event: CloudEvent[ActivityRecorded], uow: Unit) -> None:
        pass

    with pytest.raises(TypeError, match="two handlers take ActivityRecorded"):
        handlers(_on_activity, again)


def _runner(service: str) -> ConsumerRunner:
    class Db:
        settings = Settings()

    return ConsumerRunner(service=service, db=Db(), handlers=handlers(_on_activity), producer=None)  # type: ignore[arg-type]


def _record(value: bytes | None) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord("membership.enrollment", 0, 7, 0, 0, b"m1", value, None, 0, 0, [])


def _skipped(service: str, reason: str) -> float:
    return metrics.value("events_skipped_total", reason=reason, service=service) or 0


def test_a_consumer_decodes_the_types_it_handles() -> None:
    delivery = _runner("probe-a")._decode(_record(new_event(_activity(), member_id="m1", chain_id="c").to_json()))
    assert delivery.error is None and delivery.event is not None
    assert isinstance(delivery.event.data, ActivityRecorded)


def test_an_invalid_event_of_a_handled_type_is_dead_lettered_not_skipped() -> None:
    doc = json.loads(new_event(_activity(), member_id="m1", chain_id="c").to_json())
    del doc["data"]["kind"]
    delivery = _runner("probe-b")._decode(_record(json.dumps(doc).encode()))
    assert delivery.event is None and delivery.error is not None and "ActivityRecorded" in delivery.error
    assert _skipped("probe-b", "not handled") == 0


def test_a_known_type_the_consumer_does_not_handle_is_skipped_and_counted_even_if_invalid() -> None:
    doc = json.loads(new_event(_activity(), member_id="m1", chain_id="c").to_json())
    doc["type"] = "PurchaseRecorded"  # a PurchaseRecorded with an activity's data: not this consumer's to judge
    delivery = _runner("probe-c")._decode(_record(json.dumps(doc).encode()))
    assert delivery.event is None and delivery.error is None
    assert _skipped("probe-c", "not handled") == 1


def test_a_type_no_code_knows_is_skipped_and_counted_as_unknown() -> None:
    doc = json.loads(new_event(_activity(), member_id="m1", chain_id="c").to_json())
    doc["type"] = "MemberTeleported"
    delivery = _runner("probe-d")._decode(_record(json.dumps(doc).encode()))
    assert delivery.event is None and delivery.error is None
    assert _skipped("probe-d", "unknown type") == 1


def test_an_event_without_an_id_is_dead_lettered_not_given_a_new_one_on_each_delivery() -> None:
    doc = json.loads(new_event(_activity(), member_id="m1", chain_id="c").to_json())
    for missing in (None, ""):
        doc["id"] = missing
        delivery = _runner("probe-f")._decode(_record(json.dumps(doc).encode()))
        assert delivery.event is None and delivery.error is not None and "without an id" in delivery.error
    del doc["id"]
    assert "without an id" in (_runner("probe-f")._decode(_record(json.dumps(doc).encode())).error or "")


@pytest.mark.parametrize("raw", [None, b"", b"not json", b"[1, 2]", b'{"id": "x"}', b'{"type": 5}'])
def test_garbage_is_dead_lettered(raw: bytes | None) -> None:
    delivery = _runner("probe-e")._decode(_record(raw))
    assert delivery.event is None and delivery.error


async def test_a_handler_runs_on_the_in_memory_unit_of_work_correlated_with_its_event() -> None:
    uow = await handle(_on_activity, event(_activity("m9"), chain_id="c9"), FakeUnitOfWork())
    [changed] = uow.published(PointsChanged)
    assert changed.entry_id == "a1" and changed.reason == "lecture"
    [out] = uow.events
    assert out.subject == "m9" and out.chainid == "c9" and out.time == uow.now()
    assert out.causationid == uow.causation_id and uow.committed


async def test_deferred_work_runs_once_per_key_at_commit() -> None:
    uow = FakeUnitOfWork(clock=FixedClock(NOW))
    runs: list[str] = []

    async def work(u: Unit) -> None:
        runs.append("ran")

    uow.at_commit("member:m1", work)
    uow.at_commit("member:m1", work)
    assert runs == []
    await uow.commit()
    assert runs == ["ran"]


def test_state_is_one_instance_per_kind_and_a_fake_store_must_be_provided() -> None:
    from dataclasses import dataclass, field

    @dataclass
    class Batch:
        seen: set[str] = field(default_factory=set)

    class Store:
        pass

    uow = FakeUnitOfWork()
    uow.state(Batch).seen.add("e1")
    assert uow.state(Batch).seen == {"e1"}
    with pytest.raises(TypeError, match="Store was not provided"):
        uow.state(Store, lambda real: Store())
    fake = Store()
    uow.provide(Store, fake)
    assert uow.state(Store, lambda real: Store()) is fake


def test_a_later_snapshot_replaces_the_earlier_one_in_the_fake_too() -> None:
    uow = FakeUnitOfWork()

    def progress(spend: int) -> TierProgressChanged:
        return TierProgressChanged(
            tier="member",
            next_tier="silver",
            spend_fen=spend,
            spend_needed_fen=0,
            points=0,
            points_needed=0,
            policy_version=1,
        )

    uow.publish(progress(1), member_id="m1", chain_id="c", replaces=("progress", "m1"))
    uow.publish(progress(2), member_id="m1", chain_id="c", replaces=("progress", "m1"))
    assert [p.spend_fen for p in uow.published(TierProgressChanged)] == [2]


def test_a_ttl_cache_forgets_after_its_time_and_keeps_none_as_a_value() -> None:
    now = [0.0]
    cache: TTLCache[str, str | None] = TTLCache(5, clock=lambda: now[0])
    cache.put("unknown key", None)
    assert cache.get("unknown key") is None
    now[0] = 4.9
    assert cache.get("unknown key") is None
    now[0] = 5.0
    assert cache.get("unknown key") is MISSING


def test_a_zero_ttl_cache_keeps_nothing_and_a_full_one_stays_bounded() -> None:
    assert TTLCache[str, int](0).put("k", 1) == 1
    off: TTLCache[str, int] = TTLCache(0)
    off.put("k", 1)
    assert off.get("k") is MISSING
    small: TTLCache[int, int] = TTLCache(60, max_entries=10)
    for i in range(100):
        small.put(i, i)
    assert len(small._entries) <= 10 and small.get(99) == 99


def test_purchase_events_carry_their_items_typed() -> None:
    e = event(
        PurchaseRecorded(
            purchase_id="p", pos_txn_id="t", clinic_id="c", member_id="m1", amount_fen=1, occurred_at=NOW, items=[]
        )
    )
    assert e.subject == "m1" and e.data.amount_fen == 1


def test_an_audit_entry_keeps_dates_and_models_as_json() -> None:
    from shared.audit import _jsonable

    doc = _jsonable({"until": NOW, "on": NOW.date(), "model": _activity(), "n": 1})
    assert doc == {
        "until": "2026-03-01T09:30:00Z",
        "on": "2026-03-01",
        "model": json.loads(_activity().model_dump_json()),
        "n": 1,
    }
    json.dumps(doc)  # what JSONB gets

"""The shared library's pure parts: the event envelope, redaction, the policy document."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events import (
    EVENT_TYPES,
    PointsChanged,
    PurchaseItem,
    PurchaseRecorded,
    UndecodableEvent,
    decode,
    new_event,
    topic_of,
)
from shared.observability import mask_phone, redact
from shared.policy import DEFAULT_POLICY, Policy


def _purchase() -> PurchaseRecorded:
    return PurchaseRecorded(
        purchase_id="p1",
        pos_txn_id="t1",
        clinic_id="c1",
        member_id="m1",
        amount_fen=100,
        occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
        items=[PurchaseItem(sku="s", category="c", amount_fen=100, qty=1)],
    )


def test_an_event_round_trips_through_its_cloudevents_json() -> None:
    event = new_event(_purchase(), member_id="m1", chain_id="chain", correlation_id="req-1", causation_id=None)
    doc = json.loads(event.to_json())
    assert doc["specversion"] == "1.0" and doc["type"] == "PurchaseRecorded" and doc["subject"] == "m1"
    assert doc["source"] == "membership/enrollment" and doc["chainid"] == "chain"
    assert doc["correlationid"] == "req-1" and doc["datacontenttype"] == "application/json"
    assert decode(event.to_json()) == event
    assert event.topic == topic_of("enrollment") == "membership.enrollment"


def test_every_event_type_is_registered_under_its_class_name() -> None:
    assert {
        "MemberEnrolled",
        "PurchaseRecorded",
        "PurchaseRefunded",
        "ActivityRecorded",
        "ReferralCompleted",
        "PointsChanged",
        "PointsExpiringSoon",
        "TierChanged",
        "BenefitGranted",
        "BenefitRedeemed",
        "BenefitRevoked",
        "NotificationSent",
        "NotificationFailed",
    } <= set(EVENT_TYPES)
    assert all(name == cls.__name__ for name, cls in EVENT_TYPES.items())


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        b"[]",
        b'{"type": "NoSuchEvent", "data": {}}',
        b'{"specversion": "1.0", "type": "PurchaseRecorded", "data": {"amount_fen": "lots"}}',
    ],
)
def test_undecodable_messages_raise_one_error_type(raw: bytes) -> None:
    with pytest.raises(UndecodableEvent):
        decode(raw)


def test_unknown_data_fields_are_ignored_so_producers_can_add_fields() -> None:
    event = new_event(
        PointsChanged(entry_id="e", delta=1, balance=1, entry_type="earn", reason="r"), member_id="m", chain_id="c"
    )
    doc = json.loads(event.to_json())
    doc["data"]["a_new_field"] = 42
    assert decode(json.dumps(doc)).data == event.data


def test_phones_are_masked_and_redacted_from_any_text() -> None:
    assert mask_phone("13812345678") == "*******5678"
    assert redact("lookup phone=13812345678 ok") == "lookup phone=*******5678 ok"
    assert "13812345678" not in redact('{"phone": "+8613812345678"}')


@settings(suppress_health_check=[HealthCheck.too_slow])  # regex generation is slow on a loaded machine
@given(st.from_regex(r"1[3-9]\d{9}", fullmatch=True), st.text(alphabet="abc =:", max_size=20))
def test_no_mobile_number_survives_redaction(phone: str, around: str) -> None:
    assert phone not in redact(around + phone + around)


def test_the_default_policy_is_the_spec_programme() -> None:
    p = DEFAULT_POLICY
    assert [t.code for t in p.tiers] == ["member", "silver", "gold", "diamond"]
    assert p.tier("silver").spend_fen == 5_000_000 and p.tier("diamond").points == 300_000
    assert [p.discount_percent(t) for t in ("member", "silver", "gold", "diamond")] == [100, 95, 85, 70]
    assert {b.code for b in p.benefits_of("diamond")} >= {"private_plan", "24h_response", "dedicated_doctor"}
    assert "annual_skin_check" not in {b.code for b in p.benefits_of("member")}


def test_a_policy_with_thresholds_out_of_order_is_rejected() -> None:
    doc = DEFAULT_POLICY.model_dump()
    doc["tiers"][2]["spend_fen"] = 1_000  # gold below silver
    with pytest.raises(ValidationError, match="thresholds must increase"):
        Policy.model_validate(doc)


def test_a_policy_with_an_unknown_benefit_is_rejected() -> None:
    doc = DEFAULT_POLICY.model_dump()
    doc["benefits"]["gold"].append({"code": "free_yacht"})
    with pytest.raises(ValidationError, match="unknown benefit code"):
        Policy.model_validate(doc)


def test_a_well_formed_event_of_an_unknown_type_is_told_apart_from_poison() -> None:
    from shared.events import UnknownEventType

    newer = {
        "specversion": "1.0",
        "id": "e1",
        "source": "membership/benefits",
        "type": "BenefitExpired",
        "subject": "m1",
        "chainid": "c",
        "data": {"benefit_id": "b"},
    }
    with pytest.raises(UnknownEventType):
        decode(json.dumps(newer))
    with pytest.raises(UndecodableEvent) as garbage:
        decode(b'{"type": "BenefitExpired"}')
    assert not isinstance(garbage.value, UnknownEventType)


async def test_a_snapshot_event_replaces_the_earlier_one_of_its_key_in_the_same_unit_of_work() -> None:
    from shared.clock import SystemClock
    from shared.db import UnitOfWork
    from shared.events import TierProgressChanged

    uow = UnitOfWork(session=None, tables=None, clock=SystemClock(), shards=12)  # type: ignore[arg-type]

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
    other = uow.publish(progress(5), member_id="m2", chain_id="c", replaces=("progress", "m2"))
    plain = uow.publish(
        PointsChanged(entry_id="e", delta=1, balance=1, entry_type="earn", reason="r"), member_id="m1", chain_id="c"
    )
    last = uow.publish(progress(2), member_id="m1", chain_id="c", replaces=("progress", "m1"))
    kept = [e for e in uow.pending if e is not None]
    assert kept == [other, plain, last]


def test_the_lag_gauge_skips_partitions_a_rebalance_took_away_instead_of_stopping_the_consumer() -> None:
    from aiokafka import TopicPartition

    from shared.consumer import ConsumerRunner
    from shared.observability import metrics

    kept, lost = TopicPartition("membership.enrollment", 0), TopicPartition("membership.enrollment", 1)

    class Consumer:  # what _report_lag asks of an AIOKafkaConsumer after a rebalance took partition 1
        def assignment(self) -> set:
            return {kept}

        def highwater(self, tp: TopicPartition) -> int:
            assert tp == kept, "Partition is not assigned"  # as aiokafka does
            return 10

    runner = ConsumerRunner.__new__(ConsumerRunner)
    runner.service, runner.topics, runner.lag = "lag-test", ["membership.enrollment"], {lost: 7}
    runner._report_lag(Consumer(), {kept: 4, lost: 9})  # type: ignore[arg-type]
    assert runner.lag == {kept: 6}
    assert metrics.value("consumer_lag", service="lag-test", topic="membership.enrollment") == 6

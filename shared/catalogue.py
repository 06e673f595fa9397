"""The event catalogue: an AsyncAPI 3.0.0 document generated from the code, never written by hand.

``python -m shared.catalogue > docs/asyncapi.yaml`` (``make catalogue``) describes

* one channel per topic: ``membership.<service>`` and its ``.dlq``;
* one message per event type registered in :data:`shared.events.EVENT_TYPES`: its payload is the
  CloudEvents envelope whose ``data`` is the type's pydantic JSON Schema (shared models under
  ``components/schemas``), its Kafka key is what ``EventData.key`` says;
* operations: each service ``send``s its own event types (the outbox relay), ``receive``s the
  types its ``SERVICE.handlers`` take (one operation per topic it reads) and ``send``s dead letters
  to those topics' ``.dlq``.

AsyncAPI describes one application per document and has no field for "who produces this message"
or "who consumes it" across applications: those are ``x-publisher`` / ``x-consumers`` (messages),
``x-service`` (operations) and ``x-publisher`` (channels).

Only ``SERVICE.name``, ``SERVICE.handlers`` and ``SERVICE.description`` of the five service
definitions are read. The output is deterministic (no timestamps; channels and operations in
:data:`shared.settings.SERVICES` order, messages and schemas by name), so a test can tell when the
committed document is stale.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .events import CONTENT_TYPE, EVENT_TYPES, EventData, dlq_of, envelope_of, topic_of
from .service import ServiceDefinition
from .settings import SERVICES, Settings

COMMAND = "python -m shared.catalogue > docs/asyncapi.yaml"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
SCHEMA_REF = "#/components/schemas/{model}"
DEAD_LETTER = "DeadLetter"
MODE: JsonSchemaMode = "validation"  # what consumers accept, hence what producers must send

Doc = dict[str, Any]

#: what the envelope's extension attributes mean (the model says it in comments, not in its schema)
ENVELOPE_DESCRIPTIONS = {
    "chainid": "the chain (tenant) the event belongs to",
    "correlationid": "the id of the originating request",
    "causationid": "the id of the event that caused this one, if any",
    "imported": "the event comes from an imported history, or was caused by one: it changes points, tiers "
    "and benefits like any other, but nobody is notified of it",
    "traceparent": "CloudEvents distributed-tracing extension: the W3C trace context of the span the event "
    "was created in (a request, a consumer's handling of another event, a job); absent when tracing is off",
    "tracestate": "CloudEvents distributed-tracing extension: the W3C tracestate that goes with traceparent",
}


def service_definitions() -> dict[str, ServiceDefinition]:
    """Each service's ``SERVICE`` (``<name>.service``), by name, in :data:`SERVICES` order."""
    found: dict[str, ServiceDefinition] = {}
    for name in SERVICES:
        defn = getattr(importlib.import_module(f"{name}.service"), "SERVICE", None)
        if not isinstance(defn, ServiceDefinition):
            raise TypeError(f"{name}.service.SERVICE is not a ServiceDefinition")
        if defn.name != name:
            raise ValueError(f"{name}.service.SERVICE is named {defn.name!r}")
        found[name] = defn
    return found


def consumers_of(services: Mapping[str, ServiceDefinition]) -> dict[str, list[str]]:
    """Event type name -> the services whose handlers take it (in the order of ``services``)."""
    table: dict[str, list[str]] = {}
    for name, defn in services.items():
        for event_type in defn.handlers:
            table.setdefault(event_type.__name__, []).append(name)
    return table


def channel_id(topic: str) -> str:
    """A channel's id: its topic with ``-`` for ``.`` (AsyncAPI ids are ``[A-Za-z0-9_-]+``)."""
    return topic.replace(".", "-")


def _ref(*path: str) -> Doc:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _schemas(types: list[type[EventData]]) -> tuple[dict[str, Doc], dict[str, Doc]]:
    """(envelope schema per event type name, the shared definitions for ``components/schemas``)."""
    envelopes = {t.__name__: envelope_of(t) for t in types}
    refs, top = models_json_schema(
        [(t, MODE) for t in types] + [(e, MODE) for e in envelopes.values()], ref_template=SCHEMA_REF
    )
    definitions: dict[str, Doc] = dict(top.get("$defs", {}))
    payloads: dict[str, Doc] = {}
    for name, envelope in envelopes.items():
        envelope_name = refs[(envelope, MODE)]["$ref"].rsplit("/", 1)[1]
        payloads[name] = definitions.pop(envelope_name)  # inlined as the message payload, not shared
    return payloads, {k: definitions[k] for k in sorted(definitions)}


def _payload(envelope: Doc, event_type: type[EventData]) -> Doc:
    """The envelope as producers send it: ``type`` and ``source`` fixed by :func:`shared.events.new_event`,
    ``subject`` is the message key."""
    payload = dict(envelope)
    properties = {k: dict(v) for k, v in payload["properties"].items()}
    properties["type"]["const"] = event_type.__name__
    properties["source"]["const"] = f"membership/{event_type.publisher}"
    properties["subject"]["description"] = f"the message key ({event_type.key})"
    for name, description in ENVELOPE_DESCRIPTIONS.items():
        if name in properties:
            properties[name]["description"] = description
    payload["properties"] = properties
    # CloudEvents 1.0 requires id and specversion; the model defaults them only to build new events
    payload["required"] = [p for p in properties if p in {"specversion", "id", *payload.get("required", [])}]
    return payload


def _message(event_type: type[EventData], envelope: Doc, consumers: list[str]) -> Doc:
    name = event_type.__name__
    topic = topic_of(event_type.publisher)
    described = event_type.model_json_schema().get("description")
    who = f"consumed by {', '.join(consumers)}" if consumers else "consumed by no service of the platform"
    message: Doc = {
        "name": name,
        "title": name,
        "summary": f"Published by {event_type.publisher} on {topic}; {who}.",
        "contentType": CONTENT_TYPE,
        "headers": {
            "type": "object",
            "properties": {
                "content-type": {"type": "string", "const": CONTENT_TYPE},
                "traceparent": {"type": "string", "description": "the payload's traceparent (W3C trace context)"},
                "tracestate": {"type": "string", "description": "the payload's tracestate, when it has one"},
            },
        },
        "payload": _payload(envelope, event_type),
        "correlationId": {
            "description": "the originating request, carried by every event it caused",
            "location": "$message.payload#/correlationid",
        },
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": event_type.key},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
        "x-publisher": event_type.publisher,
        "x-consumers": consumers,
        "x-key": event_type.key,
    }
    if described:
        message["description"] = " ".join(str(described).split())
    return message


def _dead_letter_message(max_attempts: int) -> Doc:
    return {
        "name": DEAD_LETTER,
        "title": "Dead letter",
        "summary": "A message a consumer could not apply, as it was on the original topic, with why.",
        "description": (
            "The original value (usually a CloudEvent of one of the topic's types, possibly undecodable bytes) and "
            "key, byte for byte, with the original headers plus `dlq.*` headers. A consumer dead-letters a message "
            "that is not a JSON object or has no `type`, one of a type it handles whose envelope or data fails "
            f"validation, and an event whose handler failed {max_attempts} times (MEMBERSHIP_CONSUMER_MAX_ATTEMPTS). "
            "Transient database and broker errors are retried without limit, never dead-lettered; types a consumer "
            "does not handle are skipped and counted, never dead-lettered. Every consumer group reading the topic "
            "dead-letters its own copy (`dlq.consumer` says which)."
        ),
        "headers": {
            "type": "object",
            "properties": {
                "dlq.error": {"type": "string", "description": "why (at most 4,000 characters)"},
                "dlq.topic": {"type": "string", "description": "the original topic"},
                "dlq.partition": {"type": "string", "description": "the original partition (decimal)"},
                "dlq.offset": {"type": "string", "description": "the original offset (decimal)"},
                "dlq.consumer": {"type": "string", "description": "the consumer group that gave up on it"},
            },
            "required": ["dlq.error", "dlq.topic", "dlq.partition", "dlq.offset", "dlq.consumer"],
        },
        "payload": {"description": "the original message value, unchanged"},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "the original message key"},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def build(
    services: Mapping[str, ServiceDefinition] | None = None,
    event_types: Mapping[str, type[EventData]] = EVENT_TYPES,
) -> Doc:
    """The AsyncAPI document, as plain data."""
    services = services if services is not None else service_definitions()
    defaults = Settings.model_fields
    partitions = int(defaults["topic_partitions"].default)
    max_attempts = int(defaults["consumer_max_attempts"].default)
    bootstrap = str(defaults["kafka_bootstrap"].default)

    types = [event_types[name] for name in sorted(event_types)]
    strangers = sorted(t.__name__ for t in types if t.publisher not in services)
    if strangers:
        raise ValueError(f"event types published by no known service: {strangers}")
    consumers = consumers_of(services)
    unknown = sorted(set(consumers) - set(event_types))
    if unknown:
        raise ValueError(f"handlers of unregistered event types: {unknown}")
    payloads, schemas = _schemas(types)

    channels: Doc = {}
    operations: Doc = {}
    for name, defn in services.items():
        topic = topic_of(name)
        own = [t.__name__ for t in types if t.publisher == name]
        channels[channel_id(topic)] = {
            "address": topic,
            "title": topic,
            "summary": f"The events {name} publishes. {defn.description}".strip(),
            "description": (
                f"Published by the outbox relay of {name}. Keyed by the envelope's `subject` (the member id; "
                f"`chain:<chain_id>` for chain-wide events), so one member's events keep their order within "
                f"one of the topic's {partitions} partitions (MEMBERSHIP_TOPIC_PARTITIONS; replication "
                "MEMBERSHIP_TOPIC_REPLICATION). Consumers scale up to the partition count."
            ),
            "messages": {t: _ref("components", "messages", t) for t in own},
            "bindings": {"kafka": {"topic": topic, "partitions": partitions, "bindingVersion": KAFKA_BINDING_VERSION}},
            "x-publisher": name,
        }
        channels[channel_id(dlq_of(topic))] = {
            "address": dlq_of(topic),
            "title": dlq_of(topic),
            "summary": f"Dead letters of the consumers of {topic}.",
            "description": f"What a consumer of {topic} could not apply, with the error and where it was.",
            "messages": {DEAD_LETTER: _ref("components", "messages", DEAD_LETTER)},
            "bindings": {
                "kafka": {"topic": dlq_of(topic), "partitions": partitions, "bindingVersion": KAFKA_BINDING_VERSION}
            },
        }

    for name in services:
        topic = topic_of(name)
        own = [t.__name__ for t in types if t.publisher == name]
        if own:
            operations[f"{name}-publishes"] = {
                "action": "send",
                "channel": _ref("channels", channel_id(topic)),
                "title": f"{name} publishes its events",
                "summary": (
                    f"The outbox relay of {name} publishes the events committed to its outbox together with the "
                    "changes that caused them (transactional outbox), in order per member."
                ),
                "messages": [_ref("channels", channel_id(topic), "messages", t) for t in own],
                "x-service": name,
            }
        taken = [t for t in types if name in consumers.get(t.__name__, [])]
        for source in services:
            read = [t.__name__ for t in taken if t.publisher == source]
            if not read:
                continue
            source_topic = topic_of(source)
            group = f"membership-{name}"
            operations[f"{name}-consumes-{source}"] = {
                "action": "receive",
                "channel": _ref("channels", channel_id(source_topic)),
                "title": f"{name} consumes {source_topic}",
                "summary": (
                    f"The idempotent consumer of {name} (group {group}) applies each batch in one transaction with the "
                    "ids it applied (the inbox) and commits offsets after it; it skips (and counts) the topic's "
                    "other types."
                ),
                "messages": [_ref("channels", channel_id(source_topic), "messages", t) for t in read],
                "bindings": {
                    "kafka": {"groupId": {"type": "string", "const": group}, "bindingVersion": KAFKA_BINDING_VERSION}
                },
                "x-service": name,
            }
            operations[f"{name}-dead-letters-{source}"] = {
                "action": "send",
                "channel": _ref("channels", channel_id(dlq_of(source_topic))),
                "title": f"{name} dead-letters what it cannot apply from {source_topic}",
                "messages": [_ref("channels", channel_id(dlq_of(source_topic)), "messages", DEAD_LETTER)],
                "x-service": name,
            }

    messages: Doc = {t.__name__: _message(t, payloads[t.__name__], consumers.get(t.__name__, [])) for t in types}
    messages[DEAD_LETTER] = _dead_letter_message(max_attempts)

    doc: Doc = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Membership platform events",
            "version": importlib.metadata.version("membership-platform"),
            "description": (
                "The events the five services of the membership platform exchange over Kafka: one topic per "
                "publishing service, keyed by member, each message a CloudEvents 1.0 JSON document in structured "
                "mode. Effects are exactly-once over at-least-once delivery (transactional outbox, idempotent "
                "consumers). Producers may add fields to an event's data, never rename or drop them; consumers "
                "ignore fields they do not know and skip types they do not handle.\n\n"
                f"Generated from shared/events.py and each service's SERVICE definition by `{COMMAND}` "
                "(`make catalogue`); do not edit it by hand."
            ),
            "x-generated-by": COMMAND,
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "embedded": {
                "host": bootstrap,
                "protocol": "kafka",
                "description": (
                    "The Tansu broker `make run` starts (MEMBERSHIP_KAFKA_BOOTSTRAP points elsewhere, e.g. at "
                    "Apache Kafka in docker-compose.yml)."
                ),
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {k: messages[k] for k in sorted(messages)},
            "schemas": schemas,
        },
    }
    # a JSON round trip: plain data only, and no object appears twice (YAML would write anchors)
    copied: Doc = json.loads(json.dumps(doc))
    return copied


def render(doc: Doc) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


def main() -> None:
    sys.stdout.buffer.write(render(build()).encode())


if __name__ == "__main__":
    main()

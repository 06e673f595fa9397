"""The committed event catalogue (docs/asyncapi.yaml): current, complete, and structurally AsyncAPI 3."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.catalogue import COMMAND, channel_id, service_definitions
from shared.events import EVENT_TYPES, EventData, dlq_of, topic_of
from shared.settings import SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
#: AsyncAPI 3.0.0: ids of channels, operations and a channel's messages; keys of components
ID = re.compile(r"^[A-Za-z0-9_\-]+$")
COMPONENT_KEY = re.compile(r"^[\w.\-]+$")
TOP_LEVEL = {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations", "components"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMMITTED.read_text(encoding="utf-8"))
    return loaded


def platform_event_types() -> dict[str, type[EventData]]:
    """The registry as the generator sees it in a fresh interpreter: other unit tests define (and
    remove) probe event types, so only the ones of shared/events.py count here."""
    return {name: cls for name, cls in EVENT_TYPES.items() if cls.__module__ == "shared.events"}


def refs(node: Any, path: str = "#") -> Iterator[tuple[str, str]]:
    """Every ``$ref`` in the document, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield path, value
            else:
                yield from refs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from refs(value, f"{path}/{i}")


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """The node a local JSON pointer (``#/a/b``) names; KeyError when there is none."""
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(ref)
    return node


def test_the_committed_catalogue_is_what_the_generator_writes_now() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "shared.catalogue"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    if generated != committed:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    "docs/asyncapi.yaml (committed)",
                    "python -m shared.catalogue (now)",
                )
            )[:60]
        )
        pytest.fail(f"docs/asyncapi.yaml is stale: run `make catalogue` ({COMMAND}) and commit it.\n{diff}")


def test_every_event_type_is_a_message_with_its_publisher_and_the_consumers_the_services_define(
    doc: dict[str, Any],
) -> None:
    services = service_definitions()
    operations = doc["operations"]
    messages = doc["components"]["messages"]
    for name, cls in platform_event_types().items():
        consumers = [s for s, defn in services.items() if cls in defn.handlers]
        channel = channel_id(topic_of(cls.publisher))
        in_channel = f"#/channels/{channel}/messages/{name}"
        message = messages.get(name)
        assert message is not None, f"{name} is not in the catalogue"
        assert message["x-publisher"] == cls.publisher
        assert message["x-consumers"] == consumers, name
        assert message["bindings"]["kafka"]["key"]["description"] == cls.key
        assert message["payload"]["properties"]["type"]["const"] == name
        assert message["payload"]["properties"]["data"] == {"$ref": f"#/components/schemas/{name}"}
        assert doc["channels"][channel]["address"] == topic_of(cls.publisher)
        assert doc["channels"][channel]["messages"][name] == {"$ref": f"#/components/messages/{name}"}

        def listing(action: str, *, channel: str = channel, in_channel: str = in_channel) -> set[str]:
            """The services with an operation of ``action`` on the channel that lists the message."""
            return {
                op["x-service"]
                for op in operations.values()
                if op["action"] == action
                and op["channel"]["$ref"] == f"#/channels/{channel}"
                and {"$ref": in_channel} in op["messages"]
            }

        assert listing("send") == {cls.publisher}, f"{name}: who sends it"
        assert listing("receive") == set(consumers), f"{name}: who receives it"


def test_every_service_consumes_only_what_it_has_handlers_for(doc: dict[str, Any]) -> None:
    services = service_definitions()
    for name, defn in services.items():
        received = {
            ref["$ref"].rsplit("/", 1)[1]
            for op in doc["operations"].values()
            if op["action"] == "receive" and op["x-service"] == name
            for ref in op["messages"]
        }
        assert received == {cls.__name__ for cls in defn.handlers}, name


def test_the_catalogue_is_structurally_asyncapi_3(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert {k for k in doc if not k.startswith("x-")} <= TOP_LEVEL
    assert isinstance(doc["info"]["title"], str) and isinstance(doc["info"]["version"], str)
    assert doc["defaultContentType"] == "application/cloudevents+json"

    topics = {topic_of(s) for s in SERVICES}
    addresses = {channel["address"] for channel in doc["channels"].values()}
    assert addresses == topics | {dlq_of(t) for t in topics}
    for cid, channel in doc["channels"].items():
        assert ID.match(cid), cid
        assert channel["messages"], f"channel {cid} carries no message"
        for mid, message in channel["messages"].items():
            assert ID.match(mid), f"{cid}: {mid}"
            assert message["$ref"].startswith("#/components/messages/"), f"{cid}: {mid}"
        assert channel["bindings"]["kafka"]["topic"] == channel["address"]

    used_channels = set()
    for oid, op in doc["operations"].items():
        assert ID.match(oid), oid
        assert op["action"] in {"send", "receive"}, oid
        assert set(op["channel"]) == {"$ref"}, oid
        channel_ref = op["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), oid
        used_channels.add(channel_ref)
        assert op["messages"], oid
        for message in op["messages"]:
            # AsyncAPI 3: an operation's messages are a subset of its channel's
            assert message["$ref"].startswith(f"{channel_ref}/messages/"), f"{oid}: {message}"
    # every topic has its publisher; a .dlq gets dead letters from the consumers of its topic, if any
    read = {
        doc["channels"][op["channel"]["$ref"].rsplit("/", 1)[1]]["address"]
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    expected = {f"#/channels/{channel_id(t)}" for t in topics} | {f"#/channels/{channel_id(dlq_of(t))}" for t in read}
    assert used_channels == expected

    for section, entries in doc["components"].items():
        for key in entries:
            assert COMPONENT_KEY.match(key), f"components/{section}/{key}"

    dangling = []
    for where, ref in refs(doc):
        try:
            resolve(doc, ref)
        except (KeyError, IndexError, ValueError):
            dangling.append(f"{where}: {ref}")
    assert not dangling, "references to nothing:\n" + "\n".join(dangling)

    referenced = {ref for _, ref in refs(doc)}
    unused = [
        f"#/components/{section}/{key}"
        for section, entries in doc["components"].items()
        for key in entries
        if f"#/components/{section}/{key}" not in referenced
    ]
    assert not unused, f"components nothing refers to: {unused}"


def test_the_reference_check_catches_a_dangling_reference(doc: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        resolve(doc, "#/components/schemas/NoSuchEvent")
    assert resolve(doc, "#/components/messages/MemberEnrolled/payload/properties/data") == {
        "$ref": "#/components/schemas/MemberEnrolled"
    }

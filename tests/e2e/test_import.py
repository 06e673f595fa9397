"""Onboarding a chain's history with ``membershipctl import``: a file of members and purchases, the
import killed half-way and resumed, ending with exactly the balances and tiers the history earns,
nothing twice, bad rows in the rejects file, and nobody notified about the past."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_membershipctl import _environ, ctl, ctl_json
from tests.helpers import APP, OPS, POS, Api, eventually

pytestmark = pytest.mark.e2e


def _members(n: int, tag: str) -> list[dict[str, Any]]:
    enrolled = datetime.now(UTC) - timedelta(days=400)
    return [
        {
            "member_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{i}")),
            "phone": f"13{abs(hash((tag, i))) % 10**9:09d}",
            "name": f"导入{i}",
            "birthday": "1990-03-04",
            "home_clinic_id": "clinic-1",
            "source": "walk_in",
            "enrolled_at": enrolled.isoformat(),
        }
        for i in range(n)
    ]


def _purchase(member_id: str, n: int, amount_fen: int, days_ago: float, tag: str) -> dict[str, Any]:
    return {
        "pos_txn_id": f"{tag}-{member_id[:8]}-{n}",
        "clinic_id": "clinic-1",
        "member_id": member_id,
        "amount_fen": amount_fen,
        "currency": "CNY",
        "occurred_at": (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(),
        "items": [{"sku": "laser-1", "category": "laser", "amount_fen": amount_fen, "qty": 1}],
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from membershipctl.importer import rows_csv

    path.write_text(rows_csv(rows), encoding="utf-8")


def _ndjson(path: Path, rows: list[dict[str, Any]], bad: list[str]) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for i, line in enumerate(bad):  # bad rows spread through the file
        lines.insert((i + 1) * len(lines) // (len(bad) + 1), line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_an_import_killed_half_way_resumes_and_applies_every_row_exactly_once(
    api: Api, stack: Any, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    people = _members(60, tag)
    # the first 20 members bought 10 times 6,000 yuan three months ago (60,000 points each: silver);
    # the other 40 once, 300 yuan (300 points)
    purchases = [
        _purchase(m["member_id"], n, 600_000, days_ago=100 - n, tag=tag) for m in people[:20] for n in range(10)
    ] + [_purchase(m["member_id"], 0, 30_000, days_ago=50, tag=tag) for m in people[20:]]
    members_file, purchases_file = tmp_path / "members.csv", tmp_path / "purchases.ndjson"
    _write_csv(members_file, [*people, {**people[0], "member_id": "not-a-uuid", "phone": "13900000000"}])
    bad = ['{"pos_txn_id": "x"', json.dumps({**purchases[0], "pos_txn_id": f"{tag}-neg", "amount_fen": -5})]
    _ndjson(purchases_file, purchases, bad)

    done = ctl(stack, "--json", "import", "members", str(members_file), "--batch-size", "25")
    assert done.returncode == 1, done.stderr  # one rejected row: exit 1, the rest imported
    summary = json.loads(done.stdout)
    assert (summary["created"], summary["exists"], summary["rejected"]) == (60, 0, 1)
    rejects = (tmp_path / "members.csv.rejects.csv").read_text()
    assert "not-a-uuid" in rejects and "member_id" in rejects

    # the purchases import is killed after its first batches, then resumed from where it stopped
    env_cmd = [sys.executable, "-m", "membershipctl", "import", "purchases", str(purchases_file), "--batch-size", "20"]
    proc = subprocess.Popen(env_cmd, env=_environ(stack, OPS), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = purchases_file.with_name(purchases_file.name + ".progress")
    deadline = time.monotonic() + 60
    while not progress.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert progress.exists(), "the import finished before it could be interrupted"
    half = json.loads(progress.read_text())
    assert 0 < half["rows"] < len(purchases) + len(bad)

    resumed = ctl(stack, "--json", "import", "purchases", str(purchases_file), "--batch-size", "20")
    assert resumed.returncode == 1, resumed.stderr
    after = json.loads(resumed.stdout)
    assert after["resumed_at_row"] == half["rows"]
    # rows of the batch in flight when killed may be sent again: they come back as exists, never twice
    assert after["created"] + after["exists"] + after["rejected"] == len(purchases) + len(bad) - half["rows"]
    assert not progress.exists()
    rejected = (tmp_path / "purchases.ndjson.rejects.csv").read_text().splitlines()
    assert len(rejected) == 1 + len(bad), rejected  # a header and each bad row once

    big = people[0]["member_id"]
    small = people[30]["member_id"]
    eventually(lambda: api.get("points", f"/v1/members/{big}/points", key=APP).json()["balance"] == 60_000, 90)
    eventually(lambda: api.get("points", f"/v1/members/{small}/points", key=APP).json()["balance"] == 300, 90)
    eventually(lambda: api.get("tiering", f"/v1/members/{big}/tier", key=APP).json()["code"] == "silver", 90)
    stack.wait_settled()
    ledger = api.get("points", f"/v1/members/{big}/points/ledger", key=APP, params={"limit": 200}).json()["items"]
    assert sorted(e["delta"] for e in ledger) == [6_000] * 10
    # the history is not announced: no notification for imported members
    notes = api.get("notify", f"/v1/members/{big}/notifications", key=APP).json()["items"]
    assert notes == [], notes

    # a second run of the whole file changes nothing
    rerun = ctl(stack, "--json", "import", "purchases", str(purchases_file), "--restart", "--batch-size", "100")
    doc = json.loads(rerun.stdout)
    assert doc["created"] == 0 and doc["exists"] == len(purchases)
    assert api.get("points", f"/v1/members/{big}/points", key=APP).json()["balance"] == 60_000

    trail = ctl_json(stack, "audit", "--action", "import.purchases", "--service", "enrollment")
    assert trail and all(e["actor_name"] == "demo-ops" for e in trail)


def test_a_purchase_batch_judges_each_row_as_the_single_call_would(api: Api) -> None:
    mid = api.enrol()["member_id"]
    tag = uuid.uuid4().hex[:6]
    ok = _purchase(mid, 1, 10_000, days_ago=3, tag=tag)
    earlier = _purchase(mid, 2, 20_000, days_ago=2, tag=tag)
    recorded = api.post("enrollment", "/v1/purchases", earlier, key=POS)
    assert recorded.status_code == 202
    items = [
        ok,
        dict(ok),  # the same row twice in one batch: recorded once
        {**ok, "amount_fen": 5_000, "items": [{**ok["items"][0], "amount_fen": 5_000}]},  # same txn, other body
        earlier,  # already recorded by the single call
        _purchase(str(uuid.uuid4()), 3, 10_000, days_ago=1, tag=tag),  # unknown member
        {**_purchase(mid, 4, 10_000, days_ago=1, tag=tag), "occurred_at": "2999-01-01T00:00:00+00:00"},
        {**_purchase(mid, 5, 10_000, days_ago=1, tag=tag), "currency": "USD"},
    ]
    r = api.post("enrollment", "/v1/purchases/batch", {"items": items}, key=OPS)
    assert r.status_code == 200, r.text
    doc = r.json()
    statuses = [(i["index"], i["status"]) for i in doc["items"]]
    assert statuses == [
        (0, "created"),
        (1, "exists"),
        (2, "rejected"),
        (3, "exists"),
        (4, "rejected"),
        (5, "rejected"),
        (6, "rejected"),
    ]
    assert doc["items"][1]["id"] == doc["items"][0]["id"]
    assert doc["items"][3]["id"] == recorded.json()["purchase_id"]
    assert doc["items"][2]["problem"]["status"] == 409
    assert doc["items"][4]["problem"]["errors"][0]["location"] == ["body", "member_id"]
    assert doc["items"][6]["problem"]["errors"][0]["location"][-1] == "currency"
    assert (doc["created"], doc["exists"], doc["rejected"]) == (1, 2, 4)
    # only the created one reaches points, once
    eventually(lambda: len(api.get("points", f"/v1/members/{mid}/points/ledger", key=APP).json()["items"]) == 2)
    refused = api.post("enrollment", "/v1/purchases/batch", {"items": items}, key=POS)
    assert refused.status_code == 403
    too_many = api.post("enrollment", "/v1/purchases/batch", {"items": [ok] * 1001}, key=OPS)
    assert too_many.status_code == 422

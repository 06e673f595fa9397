"""``make bench``: every performance budget of SPEC §10, measured on an embedded stack of its own,
side by side with pgbench on the same PostgreSQL in the same run.

    .venv/bin/python bench/run.py                    # the whole table, medians of 3 runs
    .venv/bin/python bench/run.py --quick            # shorter runs, a smaller import (a smoke test)
    .venv/bin/python bench/run.py --only idle,status # some rows

Prints one table (what, measured, budget, pass/fail) and writes ``bench/results/<date>.json`` with
every run's figures. How each row is measured:

* **pgbench**: TPC-B (scale 10) with 8 clients and 2 threads, in a database of its own on the
  stack's PostgreSQL, while the platform idles.
* **idle**: CPU of every process of the stack (the broker, PostgreSQL and all its backends, the
  APIs and workers with their children) over 10 s with nothing to do, in % of one core.
* **latency**: purchases posted at 50/s (open loop) for members enrolled beforehand, each with its
  own ``X-Correlation-Id``; a separate Kafka consumer (not the platform's) reads the points and
  tiering topics and notes when each PointsChanged and TierChanged with that correlation id
  arrives. Every purchase crosses silver's threshold, so each yields both. The hops are read from
  the outbox and inbox timestamps afterwards.
* **POST throughput**: 32 connections post purchases as fast as they are answered for 10 s; then
  the time until every effect is applied (every outbox published, every consumer group at the end
  of its topics). Purchases/s = posted / (posting time), valid when the drain took ≤ 5 s.
* **status reads**: ``GET /v1/members/{id}/status`` at 500/s (open loop) for 10 s over known members.
* **batch import**: a seeded history (``bench/make_history.py``) sent through the batch APIs, 4
  batches of 1,000 in flight, until every effect is applied: fully applied purchases/s, against
  pgbench's tps.
* **replicas**: the points worker alone consumes a backlog of purchase events, with one replica and
  then with two (each run a fresh backlog): events/s each.
* **memory**: proportional set size (PSS: shared pages counted once) of every process, summed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import Pool, closed_loop, open_loop, percentile, request_bytes  # noqa: E402

from devstack.processes import free_port  # noqa: E402
from devstack.stack import Stack  # noqa: E402
from shared.events import topic_of  # noqa: E402
from shared.settings import SERVICES  # noqa: E402

POS = {"Authorization": "Bearer dev-pos-key-0000000000000000"}
APP = {"Authorization": "Bearer dev-app-key-0000000000000000"}
OPS = {"Authorization": "Bearer dev-ops-key-0000000000000000"}
SILVER_CROSSING_FEN = 6_000_000  # 60,000 yuan: above silver's 50,000, so one purchase = one TierChanged
ROWS = ["pgbench", "idle", "latency", "post", "status", "import", "replicas", "memory"]


# ---------------------------------------------------------------------------------------------- processes


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def stack_processes(stack: Stack) -> dict[str, list[int]]:
    """Every pid of the stack, by role (a role's children included: PostgreSQL's backends, uvicorn's workers)."""
    roots = {name: p.pid for name, p in stack.procs.items() if p.poll() is None}
    assert stack.broker and stack.broker.proc and stack.postgres and stack.postgres.proc
    roots["broker"] = stack.broker.proc.pid
    roots["postgres"] = stack.postgres.proc.pid
    tree = _children()
    out: dict[str, list[int]] = {}
    for name, pid in roots.items():
        pids, todo = [], [pid]
        while todo:
            p = todo.pop()
            pids.append(p)
            todo += tree.get(p, [])
        out[name] = pids
    return out


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class CpuMeter:
    """CPU of each role of the stack between :meth:`start` and :meth:`stop`, in % of one core."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def start(self) -> None:
        self.procs = stack_processes(self.stack)
        self.before = {n: cpu_seconds(p) for n, p in self.procs.items()}
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        # processes started meanwhile (a backend) count from their birth: re-read the tree
        procs = stack_processes(self.stack)
        elapsed = time.monotonic() - self.t0
        return {n: round((cpu_seconds(p) - self.before.get(n, 0.0)) / elapsed * 100, 1) for n, p in procs.items()}


# ---------------------------------------------------------------------------------------------- the stack


def start_stack(data: Path, env: dict[str, str]) -> Stack:
    stack = Stack(
        data_dir=data,
        pg_port=free_port(),
        broker_port=free_port(),
        service_ports={s: free_port() for s in SERVICES},
        env_overrides=env,
    )
    stack.start_infrastructure()
    stack.start_services()
    stack.wait_ready()
    return stack


def settle(stack: Stack, timeout: float = 600.0) -> float:
    """Seconds until nothing is in flight (every outbox published, every group at its topics' end)."""
    started = time.perf_counter()
    stack.wait_settled(timeout)
    return time.perf_counter() - started


def pg_tools() -> Path:
    from devstack.processes import _pg_bin

    return _pg_bin()


# ---------------------------------------------------------------------------------------------- members


def member_rows(n: int, tag: str) -> list[dict[str, Any]]:
    base = int(tag, 16) % 10**8
    return [
        {
            "member_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{tag}/{i}")),
            "phone": f"+86139{(base + i) % 10**8:08d}",
            "name": "bench",
            "birthday": "1990-01-01",
            "home_clinic_id": "clinic-1",
            "source": "walk_in",
            "consents": {"marketing": False, "sms": False, "email": False},
        }
        for i in range(n)
    ]


async def import_batches(url: str, kind: str, rows: list[dict[str, Any]], in_flight: int = 4, size: int = 1000) -> int:
    """Send ``rows`` through ``/v1/<kind>/batch``; returns how many were created or existed."""
    batches = [rows[i : i + size] for i in range(0, len(rows), size)]
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    accepted = 0
    rejected: list[Any] = []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while not queue.empty():
            batch = queue.get_nowait()
            r = await client.post(f"{url}/v1/{kind}/batch", headers=OPS, json={"items": batch})
            r.raise_for_status()
            for item in r.json()["items"]:
                if item["status"] == "rejected":
                    rejected.append(item)
                else:
                    accepted += 1

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(in_flight)))
    if rejected:
        raise RuntimeError(f"{len(rejected)} {kind} rejected, e.g. {rejected[:2]}")
    return accepted


def purchase_body(member_id: str, amount_fen: int, txn: str) -> bytes:
    return json.dumps(
        {
            "pos_txn_id": txn,
            "clinic_id": "clinic-1",
            "member_id": member_id,
            "amount_fen": amount_fen,
            "currency": "CNY",
            "occurred_at": datetime.now(UTC).isoformat(),
            "items": [{"sku": "s", "category": "injectables", "amount_fen": amount_fen, "qty": 1}],
        }
    ).encode()


# ---------------------------------------------------------------------------------------------- rows


@dataclass
class Row:
    key: str
    what: str
    budget: str
    runs: list[float] = field(default_factory=list)
    unit: str = ""
    passed: Callable[[float], bool] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def verdict(self) -> str:
        if self.passed is None or not self.runs:
            return ""
        return "pass" if self.passed(self.median) else "FAIL"


def run_pgbench(stack: Stack, runs: int, seconds: int) -> Row:
    assert stack.postgres
    bin_dir = pg_tools()
    conn = ["-h", "127.0.0.1", "-p", str(stack.postgres.port), "-U", "postgres"]
    subprocess.run([str(bin_dir / "createdb"), *conn, "pgbench"], capture_output=True)
    subprocess.run(
        [str(bin_dir / "pgbench"), *conn, "-i", "-q", "-s", "10", "pgbench"], check=True, capture_output=True
    )
    row = Row("pgbench", "pgbench TPC-B, 8 clients (same PostgreSQL)", "reference", unit="tps")
    for _ in range(runs):
        out = subprocess.run(
            [str(bin_dir / "pgbench"), *conn, "-c", "8", "-j", "2", "-T", str(seconds), "pgbench"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        tps = next(float(line.split("=")[1].split()[0]) for line in out.splitlines() if line.startswith("tps ="))
        row.runs.append(round(tps, 1))
    return row


def run_idle(stack: Stack, runs: int, seconds: float) -> Row:
    row = Row("idle", "whole stack idle", "≤ 5 % of one core", unit="% core", passed=lambda v: v <= 5.0)
    settle(stack)
    time.sleep(3)
    per_role: list[dict[str, float]] = []
    for _ in range(runs):
        meter = CpuMeter(stack)
        meter.start()
        time.sleep(seconds)
        usage = meter.stop()
        per_role.append(usage)
        row.runs.append(round(sum(usage.values()), 1))
    row.detail["per_process_median"] = {n: statistics.median(u.get(n, 0.0) for u in per_role) for n in per_role[0]}
    return row


class Watcher:
    """A Kafka consumer of its own, outside the platform: when each event type arrives, by correlation id."""

    def __init__(self, bootstrap: str, topics: list[str], types: set[str]) -> None:
        self.bootstrap, self.topics, self.types = bootstrap, topics, types
        self.seen: dict[tuple[str, str], float] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, fetch_max_wait_ms=5, enable_auto_commit=False
        )
        await self.consumer.start()
        parts = [TopicPartition(t, p) for t in self.topics for p in (self.consumer.partitions_for_topic(t) or ())]
        if not parts:
            await self.consumer._client.force_metadata_update()
            parts = [TopicPartition(t, p) for t in self.topics for p in (self.consumer.partitions_for_topic(t) or ())]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        for tp in parts:
            await self.consumer.position(tp)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                for r in records:
                    doc = json.loads(r.value)
                    if doc.get("type") in self.types and doc.get("correlationid"):
                        self.seen.setdefault((doc["type"], doc["correlationid"]), now)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.consumer.stop()


async def _latency_once(stack: Stack, members: list[str], rate: float, seconds: float) -> dict[str, Any]:
    assert stack.broker
    watcher = Watcher(
        stack.broker.bootstrap, [topic_of("points"), topic_of("tiering")], {"PointsChanged", "TierChanged"}
    )
    await watcher.start()
    sent: dict[str, float] = {}
    port = stack.service_ports["enrollment"]
    run = uuid.uuid4().hex[:8]

    def make(i: int) -> bytes:
        cid = f"lat-{run}-{i}"
        sent[cid] = time.time()
        headers = {**POS, "X-Correlation-Id": cid}
        return request_bytes("POST", "/v1/purchases", headers, purchase_body(members[i], SILVER_CROSSING_FEN, cid))

    async with Pool("127.0.0.1", port, 16) as pool:
        result = await open_loop(pool, rate, seconds, make)
    deadline = time.time() + 30
    while time.time() < deadline:
        if all(("TierChanged", c) in watcher.seen and ("PointsChanged", c) in watcher.seen for c in sent):
            break
        await asyncio.sleep(0.2)
    await watcher.stop()
    points = [
        (watcher.seen[("PointsChanged", c)] - t) * 1000 for c, t in sent.items() if ("PointsChanged", c) in watcher.seen
    ]
    tiers = [
        (watcher.seen[("TierChanged", c)] - t) * 1000 for c, t in sent.items() if ("TierChanged", c) in watcher.seen
    ]
    return {
        "posted": len(sent),
        "accepted": result.ok(200, 201, 202),
        "points_seen": len(points),
        "tiers_seen": len(tiers),
        # an event that never arrived counts as the worst latency there is
        "points_p50_ms": percentile(points, 0.5),
        "points_p99_ms": percentile(points, 0.99) if len(points) == len(sent) else float("inf"),
        "tier_p50_ms": percentile(tiers, 0.5),
        "tier_p99_ms": percentile(tiers, 0.99) if len(tiers) == len(sent) else float("inf"),
        "post_p50_ms": percentile(result.latencies_ms, 0.5),
        "correlation_prefix": f"lat-{run}-",
    }


async def _hops(stack: Stack, prefix: str) -> dict[str, float]:
    """Median of each hop of the purchase → PointsChanged → (tiering) path, from outbox/inbox timestamps."""
    import asyncpg

    conn = await asyncpg.connect(stack.settings().asyncpg_dsn)
    try:
        rows = await conn.fetch(
            """
            WITH p AS (
              SELECT event_id, created_at, published_at FROM enrollment.outbox
              WHERE event_type = 'PurchaseRecorded' AND payload::jsonb->>'correlationid' LIKE $1)
            SELECT extract(epoch FROM p.published_at - p.created_at) * 1000 AS relay_ms,
                   extract(epoch FROM pi.applied_at - p.published_at) * 1000 AS to_points_ms,
                   extract(epoch FROM po.published_at - pi.applied_at) * 1000 AS points_ms,
                   extract(epoch FROM ti.applied_at - p.published_at) * 1000 AS to_tiering_ms
            FROM p
            JOIN points.inbox pi ON pi.event_id = p.event_id
            JOIN points.outbox po ON po.event_type = 'PointsChanged' AND po.payload::jsonb->>'causationid' = p.event_id
            JOIN tiering.inbox ti ON ti.event_id = p.event_id
            """,
            prefix + "%",
        )
    finally:
        await conn.close()
    out: dict[str, float] = {}
    for col in ("relay_ms", "to_points_ms", "points_ms", "to_tiering_ms"):
        values = [float(r[col]) for r in rows if r[col] is not None]
        out[f"{col[:-3]}_p50_ms"] = round(percentile(values, 0.5), 1)
    return out


def run_latency(
    stack: Stack, runs: int, seconds: float, rate: float = 50.0, profile: Path | None = None
) -> tuple[Row, Row]:
    need = int(rate * seconds) * runs
    enrollment = stack.url("enrollment")
    tag = uuid.uuid4().hex[:6]
    rows = member_rows(need, tag)
    asyncio.run(import_batches(enrollment, "members", rows))
    settle(stack)
    members = [r["member_id"] for r in rows]
    points = Row(
        "latency_points", f"POS→PointsChanged at {rate:g}/s, p99", "≤ 150 ms", unit="ms", passed=lambda v: v <= 150
    )
    tier = Row("latency_tier", f"POS→TierChanged at {rate:g}/s, p99", "≤ 300 ms", unit="ms", passed=lambda v: v <= 300)
    per = int(rate * seconds)
    hops: list[dict[str, float]] = []
    for n in range(runs):
        spies = start_profiles(stack, seconds, profile / "latency") if profile is not None and n == 0 else []
        meter = CpuMeter(stack)
        meter.start()
        once = asyncio.run(_latency_once(stack, members[n * per : (n + 1) * per], rate, seconds))
        usage = meter.stop()
        points.detail.setdefault("cpu_percent", []).append(usage)
        for name, target, spy in spies:
            spy.wait(timeout=seconds + 30)
            if target.exists():
                points.detail.setdefault("profile", {})[name] = summarize_profile(target)
        points.runs.append(round(once["points_p99_ms"], 1))
        tier.runs.append(round(once["tier_p99_ms"], 1))
        points.detail.setdefault("runs", []).append(once)
        settle(stack)
        hops.append(asyncio.run(_hops(stack, once["correlation_prefix"])))
    points.detail["p50_ms"] = statistics.median(r["points_p50_ms"] for r in points.detail["runs"])
    tier.detail["p50_ms"] = statistics.median(r["tier_p50_ms"] for r in points.detail["runs"])
    points.detail["hops_p50_ms"] = {k: statistics.median(h[k] for h in hops) for k in hops[0]} if hops else {}
    return points, tier


def family(frame: str) -> str:
    """The library (or our package) a py-spy frame ``function (path:line)`` belongs to."""
    path = frame.rsplit("(", 1)[-1].rstrip(")")
    if "/" not in path:
        return path.split(".", 1)[0].split(":", 1)[0]  # a top-level module: ssl.py, selectors.py
    top = path.split("/", 1)[0]
    services = {"enrollment", "points", "tiering", "benefits", "notify"}
    return "our services" if top in services else top


def summarize_profile(path: Path, top: int = 6) -> dict[str, float]:
    """Share of samples by the family of the innermost frame (self time), from py-spy's raw output."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        # no Python frame running (waiting in epoll) counts as idle
        fam = "idle" if len(frames) == 1 or "select (selectors.py" in leaf else family(leaf)
        counts[fam] = counts.get(fam, 0) + int(n)
        total += int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return {k: round(100 * v / total, 1) for k, v in ranked} if total else {}


def start_profiles(stack: Stack, seconds: float, out: Path) -> list[tuple[str, Path, subprocess.Popen[bytes]]]:
    """py-spy record (raw collapsed stacks) of every Python process of the stack, for ``seconds``."""
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, proc in stack.procs.items():
        if proc.poll() is not None:
            continue
        target = out / f"{name}.txt"
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(proc.pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--subprocesses",
                "--nonblocking",
                "-o",
                str(target),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        spies.append((name, target, spy))
    return spies


def run_post(stack: Stack, runs: int, seconds: float, members: list[str], profile: Path | None = None) -> Row:
    row = Row(
        "post",
        "single POST /v1/purchases, all effects applied",
        "≥ 300 /s, drain ≤ 5 s",
        unit="/s",
        passed=lambda v: v >= 300,
    )
    port = stack.service_ports["enrollment"]
    for _ in range(runs):
        run = uuid.uuid4().hex[:8]

        def make(i: int, run: str = run) -> bytes:
            return request_bytes(
                "POST", "/v1/purchases", POS, purchase_body(members[i % len(members)], 10_000, f"post-{run}-{i}")
            )

        async def go(make: Callable[[int], bytes] = make) -> Any:
            async with Pool("127.0.0.1", port, 32) as pool:
                return await closed_loop(pool, seconds, make)

        spies = start_profiles(stack, seconds, profile) if profile is not None and not row.runs else []
        meter = CpuMeter(stack)
        meter.start()
        result = asyncio.run(go())
        drain = settle(stack)
        usage = meter.stop()
        accepted = result.ok(200, 201, 202)
        elapsed = time.monotonic() - meter.t0
        # CPU per purchase, by process: what each purchase costs each part of the stack, all effects included
        row.detail.setdefault("cpu_ms_per_purchase", []).append(
            {n: round(u / 100 * elapsed / max(1, accepted) * 1000, 3) for n, u in usage.items()}
        )
        for name, target, spy in spies:
            spy.wait(timeout=seconds + 30)
            if target.exists():
                row.detail.setdefault("profile", {})[name] = summarize_profile(target)
        rate = accepted / result.elapsed_s
        # posting faster than the pipeline applies only counts if the backlog is gone within 5 s
        row.runs.append(round(rate if drain <= 5.0 else accepted / (result.elapsed_s + drain), 1))
        row.detail.setdefault("runs", []).append(
            {
                "accepted": accepted,
                "statuses": result.statuses,
                "errors": result.errors,
                "post_rate": round(rate, 1),
                "drain_s": round(drain, 2),
                "post_p50_ms": round(percentile(result.latencies_ms, 0.5), 2),
                "post_p99_ms": round(percentile(result.latencies_ms, 0.99), 2),
            }
        )
    row.detail["drain_s_median"] = statistics.median(r["drain_s"] for r in row.detail["runs"])
    return row


def run_status(stack: Stack, runs: int, seconds: float, members: list[str], rate: float = 500.0) -> Row:
    row = Row(
        "status", f"GET /v1/members/{{id}}/status at {rate:g}/s, p99", "≤ 15 ms", unit="ms", passed=lambda v: v <= 15
    )
    port = stack.service_ports["enrollment"]
    requests = [request_bytes("GET", f"/v1/members/{m}/status", APP) for m in members]

    def make(i: int) -> bytes:
        return requests[i % len(requests)]

    for _ in range(runs):

        async def go() -> Any:
            async with Pool("127.0.0.1", port, 64) as pool:
                return await open_loop(pool, rate, seconds, make)

        result = asyncio.run(go())
        ok = result.ok(200)
        p99 = percentile(result.latencies_ms, 0.99) if ok == int(rate * seconds) else float("inf")
        row.runs.append(round(p99, 2))
        row.detail.setdefault("runs", []).append(
            {
                "ok": ok,
                "statuses": result.statuses,
                "errors": result.errors,
                "p50_ms": round(percentile(result.latencies_ms, 0.5), 2),
            }
        )
    return row


def run_import(stack: Stack, pgbench_tps: float, n_members: int, n_purchases: int, work: Path) -> Row:
    row = Row(
        "import",
        f"batch import {n_purchases:,} purchases / {n_members:,} members, fully applied",
        f"≥ 0.5 x pgbench ({0.5 * pgbench_tps:,.0f} /s)",
        unit="/s",
        passed=lambda v: v >= 0.5 * pgbench_tps,
    )
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/make_history.py"),
            "--members",
            str(n_members),
            "--purchases",
            str(n_purchases),
            "--out",
            str(work),
        ],
        check=True,
        capture_output=True,
    )
    members = _read_members(work / "members.csv")
    purchases = [json.loads(line) for line in (work / "purchases.ndjson").read_text(encoding="utf-8").splitlines()]
    url = stack.url("enrollment")
    t0 = time.perf_counter()
    asyncio.run(import_batches(url, "members", members))
    settle(stack)
    t1 = time.perf_counter()
    asyncio.run(import_batches(url, "purchases", purchases))
    t2 = time.perf_counter()
    settle(stack, timeout=3600)
    t3 = time.perf_counter()
    rate = n_purchases / (t3 - t1)
    row.runs.append(round(rate, 1))
    row.detail = {
        "members_s": round(t1 - t0, 1),
        "members_per_s": round(n_members / (t1 - t0), 1),
        "purchases_posted_s": round(t2 - t1, 1),
        "purchases_applied_s": round(t3 - t1, 1),
        "ratio_to_pgbench": round(rate / pgbench_tps, 3),
    }
    return row


def _read_members(path: Path) -> list[dict[str, Any]]:
    import csv

    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        {
            "member_id": r["member_id"],
            "phone": r["phone"],
            "name": r["name"],
            "birthday": r["birthday"],
            "home_clinic_id": r["home_clinic_id"],
            "source": r["source"],
            "enrolled_at": r["enrolled_at"],
            "consents": {"marketing": False, "sms": False, "email": False},
        }
        for r in rows
    ]


def run_replicas(stack: Stack, n_events: int, members: list[str]) -> Row:
    """The points worker alone against a backlog: one replica, then two (fresh backlogs)."""
    row = Row(
        "replicas", "points worker: 2 replicas vs 1 on a backlog", "2 > 1", unit="x (2 vs 1)", passed=lambda v: v > 1.0
    )
    url = stack.url("enrollment")
    rates: dict[int, float] = {}
    for replicas in (1, 2):
        stack.stop_process("points-worker")
        stack.stop_process("points-worker2")
        tag = uuid.uuid4().hex[:6]
        body = [json.loads(purchase_body(members[i % len(members)], 10_000, f"rep-{tag}-{i}")) for i in range(n_events)]
        asyncio.run(import_batches(url, "purchases", body))
        settle(stack)  # everything but the points worker catches up first: the backlog is the points worker's
        stack.start_process("points", "worker")
        if replicas == 2:
            _start_replica(stack, "points")
        settle(stack, timeout=600)
        # from the first to the last event applied (the inbox's timestamps), so start-up and the group's
        # join do not count: the replicas' steady rate
        rates[replicas] = asyncio.run(_applied_rate(stack, f"rep-{tag}-"))
    stack.stop_process("points-worker2")
    row.runs.append(round(rates[2] / rates[1], 2))
    row.detail = {"events": n_events, "one_replica_per_s": round(rates[1], 1), "two_replicas_per_s": round(rates[2], 1)}
    return row


async def _applied_rate(stack: Stack, txn_prefix: str) -> float:
    """Events/s at which the points worker applied the purchases whose pos_txn_id starts with the prefix."""
    import asyncpg

    conn = await asyncpg.connect(stack.settings().asyncpg_dsn)
    try:
        row = await conn.fetchrow(
            """
            SELECT count(*) AS n, extract(epoch FROM max(i.applied_at) - min(i.applied_at)) AS span
            FROM enrollment.outbox o JOIN points.inbox i ON i.event_id = o.event_id
            WHERE o.event_type = 'PurchaseRecorded' AND o.payload::jsonb->'data'->>'pos_txn_id' LIKE $1
            """,
            txn_prefix + "%",
        )
    finally:
        await conn.close()
    return float(row["n"]) / max(float(row["span"] or 0), 1e-3)


def _start_replica(stack: Stack, service: str) -> None:
    """A second worker of ``service`` (its own /metrics port), in the same consumer group."""
    assert stack.log_dir
    env = {**stack.env, f"MEMBERSHIP_{service.upper()}_WORKER_PORT": str(free_port())}
    name = f"{service}-worker2"
    with open(stack.log_dir / f"{name}.log", "ab") as log:
        stack.procs[name] = subprocess.Popen(
            [sys.executable, "-m", service, "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_memory(stack: Stack) -> Row:
    row = Row("memory", "whole stack resident memory (PSS)", "≤ 1.5 GB", unit="MB", passed=lambda v: v <= 1536)
    procs = stack_processes(stack)
    per = {n: round(pss_bytes(p) / 2**20, 1) for n, p in procs.items()}
    row.runs.append(round(sum(per.values()), 1))
    row.detail["per_process_mb"] = per
    return row


# ---------------------------------------------------------------------------------------------- main


def print_table(rows: list[Row], pgbench_tps: float | None) -> None:
    print()
    print(f"{'what':<62} {'measured (median)':>20} {'budget':>26} {'':>5}")
    print("-" * 118)
    for r in rows:
        value = f"{r.median:,.1f} {r.unit}" if r.runs else "-"
        print(f"{r.what:<62} {value:>20} {r.budget:>26} {r.verdict:>5}")
        if r.key == "import" and pgbench_tps:
            print(f"{'':<62} {r.detail['ratio_to_pgbench']:>18} x pgbench")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each timed run")
    parser.add_argument("--quick", action="store_true", help="short runs and a small import (a smoke test)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of: {','.join(ROWS)}")
    # the 1,000,000 / 100,000 takes over an hour here (the consumers apply a few hundred purchases a
    # second): --import-purchases 1000000 --import-members 100000 runs it
    parser.add_argument("--import-members", type=int, default=10_000)
    parser.add_argument("--import-purchases", type=int, default=100_000)
    parser.add_argument("--replica-events", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--profile", type=Path, help="py-spy every Python process during the first POST run, into this folder"
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the stack (repeatable)")
    args = parser.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 4.0)
        args.import_members, args.import_purchases, args.replica_events = 2_000, 20_000, 3_000
    only = set(args.only.split(","))
    # enrollment's API takes the POS's load: two processes on the 2-core machine (docs/decisions/0047)
    env = {"MEMBERSHIP_API_WORKERS_BY_SERVICE": '{"enrollment": 2}', **dict(kv.split("=", 1) for kv in args.env)}
    data = Path(tempfile.mkdtemp(prefix="membership-bench-"))
    started = datetime.now(UTC)
    print(f"starting an embedded stack in {data} ...", flush=True)
    stack = start_stack(data, env)
    rows: list[Row] = []
    pgbench_tps: float | None = None
    try:
        if "pgbench" in only or "import" in only:
            print("pgbench ...", flush=True)
            row = run_pgbench(stack, args.runs, int(args.seconds))
            pgbench_tps = row.median
            rows.append(row)
        if "idle" in only:
            print("idle ...", flush=True)
            rows.append(run_idle(stack, args.runs, args.seconds))
        if "latency" in only:
            print("latency at 50/s ...", flush=True)
            rows += run_latency(stack, args.runs, args.seconds, profile=args.profile)
        members: list[str] = []
        if only & {"post", "status", "replicas"}:
            tag = uuid.uuid4().hex[:6]
            mrows = member_rows(2_000, tag)
            asyncio.run(import_batches(stack.url("enrollment"), "members", mrows))
            settle(stack)
            members = [r["member_id"] for r in mrows]
        if "post" in only:
            print("POST throughput ...", flush=True)
            rows.append(run_post(stack, args.runs, args.seconds, members, args.profile))
        if "status" in only:
            print("status reads at 500/s ...", flush=True)
            rows.append(run_status(stack, args.runs, args.seconds, members))
        if "replicas" in only:
            print("points worker replicas ...", flush=True)
            rows.append(run_replicas(stack, args.replica_events, members))
        if "memory" in only:
            # the running platform's memory, before the import: the embedded broker keeps every message in
            # memory (a million events are hundreds of MB more; recorded in the import row's detail)
            rows.append(run_memory(stack))
        if "import" in only:
            print(f"batch import of {args.import_purchases:,} purchases ...", flush=True)
            assert pgbench_tps is not None
            rows.append(run_import(stack, pgbench_tps, args.import_members, args.import_purchases, data / "history"))
            rows[-1].detail["memory_after_mb"] = run_memory(stack).detail["per_process_mb"]
    finally:
        stack.stop()
    print_table(rows, pgbench_tps)
    for r in rows:
        if r.key == "latency_points" and r.detail.get("hops_p50_ms"):
            print("hops (p50 ms):", json.dumps(r.detail["hops_p50_ms"]))
        if r.key == "idle":
            print("idle per process (% core):", json.dumps(r.detail["per_process_median"]))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started:%Y-%m-%d}.json"
    doc = {
        "started": started.isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_at_end": os.getloadavg()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [
            {
                "key": r.key,
                "what": r.what,
                "budget": r.budget,
                "unit": r.unit,
                "runs": r.runs,
                "median": r.median,
                "verdict": r.verdict,
                "detail": r.detail,
            }
            for r in rows
        ],
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"written: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()

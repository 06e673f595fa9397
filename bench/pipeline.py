"""Pipeline benchmark: N purchases for M members through the enrollment API, then the time until
every derived effect (points, tier, benefits) is visible through the other services' APIs.

    .venv/bin/python bench/pipeline.py                       # its own stack on free ports
    .venv/bin/python bench/pipeline.py --purchases 20000 --members 200
    .venv/bin/python bench/pipeline.py --target              # a running `make run` (demo keys)

Each member gets N/M purchases of equal amounts adding up to at least 60,000 yuan, so every
member crosses the 50,000-yuan silver threshold. Prints a JSON document and a short table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.processes import free_port
from devstack.stack import Stack
from shared.settings import DEFAULT_PORTS, SERVICES

POS = {"Authorization": "Bearer dev-pos-key-0000000000000000"}
APP = {"Authorization": "Bearer dev-app-key-0000000000000000"}
SILVER_CROSSING_FEN = 6_000_000  # 60,000 yuan per member: above silver's 50,000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def enrol(client: httpx.AsyncClient, url: str) -> str:
    r = await client.post(
        f"{url}/v1/members",
        headers=APP,
        json={
            "phone": "135" + str(uuid.uuid4().int)[:8],
            "name": "bench",
            "birthday": "1990-01-01",
            "home_clinic_id": "clinic-1",
            "source": "walk_in",
            "consents": {"marketing": False, "sms": False, "email": False},
        },
    )
    r.raise_for_status()
    return r.json()["member_id"]


RETRIES = {"transport": 0}


async def _post_with_retry(client: httpx.AsyncClient, url: str, body: dict) -> httpx.Response:
    """A POS retries a purchase whose response it did not get: the same pos_txn_id is idempotent."""
    for attempt in range(5):
        try:
            return await client.post(url, headers=POS, json=body)
        except httpx.TransportError:
            RETRIES["transport"] += 1
            if attempt == 4:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


async def post_purchases(
    client: httpx.AsyncClient, url: str, members: list[str], n: int, concurrency: int, amount_fen: int
) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {
                "pos_txn_id": f"bench-{uuid.uuid4()}",
                "clinic_id": "clinic-1",
                "member_id": members[i % len(members)],
                "amount_fen": amount_fen,
                "currency": "CNY",
                "occurred_at": datetime.now(UTC).isoformat(),
                "items": [{"sku": "s", "category": "c", "amount_fen": amount_fen, "qty": 1}],
            }
            started = time.perf_counter()
            r = await _post_with_retry(client, f"{url}/v1/purchases", body)
            latencies.append(time.perf_counter() - started)
            if r.status_code not in (200, 202):
                raise RuntimeError(f"purchase failed: {r.status_code} {r.text}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def wait_effects(
    client: httpx.AsyncClient, urls: dict[str, str], expected: dict[str, int], timeout: float
) -> dict[str, float]:
    """Poll until every member shows its points, tier and benefits; return when each kind was complete."""
    started = time.perf_counter()
    done: dict[str, float] = {}
    todo = {"points": set(expected), "tier": set(expected), "benefits": set(expected)}

    async def check(kind: str, m: str) -> bool:
        try:
            return await _check(kind, m)
        except httpx.TransportError:
            return False  # a keep-alive connection closed under us: ask again next round

    async def _check(kind: str, m: str) -> bool:
        if kind == "points":
            r = await client.get(f"{urls['points']}/v1/members/{m}/points", headers=APP)
            return r.status_code == 200 and r.json()["balance"] == expected[m]
        if kind == "tier":
            r = await client.get(f"{urls['tiering']}/v1/members/{m}/tier", headers=APP)
            return (
                r.status_code == 200
                and r.json()["code"] != "member"
                and r.json()["progress"]["spend_fen"] == expected[m] // 2 * 100
            )
        r = await client.get(f"{urls['benefits']}/v1/members/{m}/benefits", headers=APP)
        return r.status_code == 200 and any(b["code"] == "annual_skin_check" for b in r.json()["items"])

    while any(todo.values()):
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"effects incomplete after {timeout}s: { {k: len(v) for k, v in todo.items()} }")
        for kind, members in todo.items():
            if not members:
                continue
            sample = list(members)[:50]
            results = await asyncio.gather(*(check(kind, m) for m in sample))
            members.difference_update(m for m, ok in zip(sample, results, strict=False) if ok)
            if not members and kind not in done:
                done[kind] = time.perf_counter()
        await asyncio.sleep(0.25)
    return done


async def run(urls: dict[str, str], n: int, m: int, concurrency: int, timeout: float) -> dict:
    limits = httpx.Limits(max_connections=concurrency + 20, max_keepalive_connections=concurrency + 20)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        members = await asyncio.gather(*(enrol(client, urls["enrollment"]) for _ in range(m)))
        per_member_count = -(-n // m)
        amount_fen = -(-SILVER_CROSSING_FEN // per_member_count // 100) * 100  # whole yuan
        per_member = {mid: 0 for mid in members}
        for i in range(n):
            per_member[members[i % m]] += amount_fen // 100 * 2  # double points in the first 30 days
        await asyncio.sleep(2)  # let enrolment effects settle so the timing is the purchases'
        started = time.perf_counter()
        latencies = await post_purchases(client, urls["enrollment"], list(members), n, concurrency, amount_fen)
        posted = time.perf_counter()
        done = await wait_effects(client, urls, per_member, timeout)
    finished = max(done.values())
    return {
        "purchases": n,
        "members": m,
        "concurrency": concurrency,
        "amount_fen": amount_fen,
        "post_seconds": round(posted - started, 2),
        "post_throughput_per_s": round(n / (posted - started), 1),
        "post_latency_ms": {
            "p50": round(pct(latencies, 0.5) * 1000, 1),
            "p99": round(pct(latencies, 0.99) * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1),
        },
        "end_to_end_seconds": round(finished - started, 2),
        "drain_after_last_post_seconds": round(finished - posted, 2),
        "effects_complete_at_seconds": {k: round(v - started, 2) for k, v in done.items()},
        "pipeline_events_per_s": round(n / (finished - started), 1),
        "client_retries": RETRIES["transport"],
    }


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time (user + system) of each process of the stack so far, PostgreSQL's backends included."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
        except (FileNotFoundError, IndexError, ValueError):
            return 0.0

    out = {name: of(p.pid) for name, p in stack.procs.items()}
    out["broker"] = of(stack.broker.proc.pid) if stack.broker and stack.broker.proc else 0.0
    out["postgres"] = of(stack.postgres.proc.pid) if stack.postgres and stack.postgres.proc else 0.0
    out["bench-client"] = of(os.getpid())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--purchases", "-n", type=int, default=20_000)
    parser.add_argument("--members", "-m", type=int, default=200)
    parser.add_argument("--concurrency", "-c", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--target", action="store_true", help="use the running `make run` on the default ports")
    args = parser.parse_args()
    stack = None
    if args.target:
        urls = {s: f"http://127.0.0.1:{p}" for s, p in DEFAULT_PORTS.items()}
    else:
        data = Path(tempfile.mkdtemp(prefix="membership-bench-"))
        stack = Stack(
            data_dir=data,
            pg_port=free_port(),
            broker_port=free_port(),
            service_ports={s: free_port() for s in SERVICES},
            env_overrides={"MEMBERSHIP_NOTIFY_SINK_DIR": str(data / "sink")},
        )
        print(f"starting a stack in {data} ...", file=sys.stderr)
        stack.start_infrastructure()
        stack.start_services()
        stack.wait_ready(120)
        urls = {s: stack.url(s) for s in SERVICES}
    try:
        before = cpu_seconds(stack) if stack else {}
        result = asyncio.run(run(urls, args.purchases, args.members, args.concurrency, args.timeout))
        if stack:
            after = cpu_seconds(stack)
            result["cpu_seconds"] = {
                k: round(after[k] - before.get(k, 0), 1) for k in sorted(after, key=after.get, reverse=True)
            }
    finally:
        if stack:
            stack.stop()
    print(json.dumps(result, indent=2))
    print(
        f"\n{'purchases':<34}{result['purchases']:>10}  ({result['members']} members, "
        f"{result['concurrency']} concurrent)"
    )
    print(f"{'POST throughput (/s)':<34}{result['post_throughput_per_s']:>10}")
    print(
        f"{'POST latency p50 / p99 (ms)':<34}{result['post_latency_ms']['p50']:>10} / "
        f"{result['post_latency_ms']['p99']}"
    )
    print(f"{'end to end, all effects (s)':<34}{result['end_to_end_seconds']:>10}")
    print(f"{'drain after the last POST (s)':<34}{result['drain_after_last_post_seconds']:>10}")
    print(f"{'pipeline throughput (purchases/s)':<34}{result['pipeline_events_per_s']:>10}")


if __name__ == "__main__":
    main()

"""Tier policy benchmark: a what-if simulation and a full recalculation over N members.

    .venv/bin/python bench/tier_policy.py                     # 100,000 members, its own stack
    .venv/bin/python bench/tier_policy.py --members 20000 --facts 6

Starts PostgreSQL, the broker and only the tiering service (API + worker) on free ports, seeds
N members of the demo chain with qualifying facts straight into the tiering schema
(``INSERT ... SELECT generate_series``: spend and points spread over the last 400 days, tiers
set to what the default policy qualifies them for), then times ``POST /v1/policy/simulate`` of
a stricter proposal (median of 3 runs) and, after ``PUT /v1/policy``, a full
``POST /v1/policy/recalculate`` polled until the job is done. Prints JSON and a short table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.processes import free_port
from devstack.stack import Stack
from shared.settings import SERVICES, Settings

OPS = {"Authorization": "Bearer dev-ops-key-0000000000000000"}
CHAIN = "demo-chain"
# the stricter programme being weighed: thresholds up by a third or more (fen, points)
PROPOSED = {"silver": (8_000_000, 80_000), "gold": (20_000_000, 200_000), "diamond": (40_000_000, 400_000)}

SEED_MEMBERS = """
INSERT INTO tiering.members (member_id, chain_id, tier, since, review_at, policy_version, enrolled_at, updated_at)
SELECT 'bench-' || lpad(g::text, 8, '0'), $1, 'member', now() - interval '500 days', NULL, 1,
       now() - interval '500 days', now()
FROM generate_series(1, $2::int) AS g
"""

# spend per fact is skewed (most small, a few large): random()^3 times up to 150,000 yuan, at a
# random time over the last 400 days; one point per yuan, as earned from spend
SEED_FACTS = """
INSERT INTO tiering.qualifying_facts (member_id, occurred_at, spend_fen, points, source_event_id)
SELECT member_id, occurred_at, spend, spend / 100, event_id
FROM (SELECT 'bench-' || lpad(g::text, 8, '0') AS member_id, now() - random() * interval '400 days' AS occurred_at,
             (power(random(), 3) * 15000000)::bigint + 100 AS spend, 'bench-' || g || '-' || k AS event_id
      FROM generate_series(1, $1::int) AS g, generate_series(1, $2::int) AS k) AS facts
"""

# the tiers the default policy gives the seeded history today, with a review date a year on
SET_TIERS = """
WITH totals AS (
    SELECT member_id, SUM(spend_fen) AS spend, SUM(points) AS points FROM tiering.qualifying_facts
    WHERE occurred_at > now() - interval '365 days' AND member_id LIKE 'bench-%' GROUP BY member_id
)
UPDATE tiering.members m
SET tier = CASE WHEN t.spend >= 30000000 OR t.points >= 300000 THEN 'diamond'
                WHEN t.spend >= 15000000 OR t.points >= 150000 THEN 'gold'
                WHEN t.spend >= 5000000 OR t.points >= 50000 THEN 'silver' ELSE 'member' END,
    since = now() - interval '100 days', review_at = now() + interval '265 days'
FROM totals t WHERE t.member_id = m.member_id;
"""


async def seed(dsn: str, members: int, facts: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.execute("DELETE FROM tiering.qualifying_facts WHERE member_id LIKE 'bench-%'")
        await conn.execute("DELETE FROM tiering.members WHERE member_id LIKE 'bench-%'")
        await conn.execute("SELECT setseed(0.42)")
        await conn.execute(SEED_MEMBERS, CHAIN, members)
        await conn.execute(SEED_FACTS, members, facts)
        await conn.execute(SET_TIERS)
        await conn.execute("ANALYZE tiering.members")
        await conn.execute("ANALYZE tiering.qualifying_facts")
        tiers = {
            r["tier"]: r["n"]
            for r in await conn.fetch(
                "SELECT tier, count(*) AS n FROM tiering.members WHERE chain_id = $1 GROUP BY tier", CHAIN
            )
        }
        return {
            "seconds": round(time.perf_counter() - started, 2),
            "tiers": tiers,
            "facts": await conn.fetchval("SELECT count(*) FROM tiering.qualifying_facts"),
        }
    finally:
        await conn.close()


def proposal(current: dict[str, Any]) -> dict[str, Any]:
    tiers = [
        {**t, "spend_fen": PROPOSED[t["code"]][0], "points": PROPOSED[t["code"]][1]} if t["code"] in PROPOSED else t
        for t in current["tiers"]
    ]
    return {**current, "tiers": tiers}


def run(url: str, poll_seconds: float, timeout: float) -> dict[str, Any]:
    with httpx.Client(base_url=url, headers=OPS, timeout=300) as client:
        current = client.get("/v1/policy").json()
        proposed = proposal(current)
        simulate_seconds, simulation = [], None
        for _ in range(3):
            started = time.perf_counter()
            r = client.post("/v1/policy/simulate", json={"policy": proposed})
            simulate_seconds.append(time.perf_counter() - started)
            r.raise_for_status()
            simulation = r.json()
        r = client.put("/v1/policy", json=proposed)
        r.raise_for_status()
        started = time.perf_counter()
        r = client.post("/v1/policy/recalculate")
        r.raise_for_status()
        job_id = r.json()["job_id"]
        while True:
            job = client.get(f"/v1/policy/recalculations/{job_id}").json()
            if job["status"] != "running":
                break
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"recalculation not done after {timeout}s: {job}")
            time.sleep(poll_seconds)
        recalc_seconds = time.perf_counter() - started
    if job["status"] != "done":
        raise RuntimeError(f"recalculation {job['status']}: {job}")
    assert simulation is not None
    return {
        "simulate_seconds": {
            "median": round(statistics.median(simulate_seconds), 3),
            "runs": [round(s, 3) for s in simulate_seconds],
        },
        "simulation": simulation,
        "recalculation": {
            "seconds": round(recalc_seconds, 2),
            "total": job["total"],
            "processed": job["processed"],
            "moved": job["moved"],
            "members_per_s": round(job["processed"] / recalc_seconds, 1),
            "worker_seconds": round((_ts(job["finished_at"]) - _ts(job["started_at"])), 2),
        },
    }


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", "-n", type=int, default=100_000)
    parser.add_argument("--facts", "-f", type=int, default=4, help="qualifying facts per member")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="membership-bench-tier-"))
    stack = Stack(
        data_dir=data,
        pg_port=free_port(),
        broker_port=free_port(),
        service_ports={s: free_port() for s in SERVICES},
        services=("tiering",),
    )
    print(f"starting postgres, the broker and tiering in {data} ...", file=sys.stderr)
    try:
        stack.start_infrastructure()
        stack.start_services()
        stack.wait_ready(120)
        url = stack.url("tiering")
        httpx.get(url + "/v1/policy", headers=OPS).raise_for_status()  # stores version 1 of the demo chain
        dsn = Settings(database_url=stack.postgres.url).asyncpg_dsn  # type: ignore[union-attr]
        print(f"seeding {args.members} members x {args.facts} facts ...", file=sys.stderr)
        seeded = asyncio.run(seed(dsn, args.members, args.facts))
        result = {
            "members": args.members,
            "facts_per_member": args.facts,
            "seed": seeded,
            **run(url, 0.25, args.timeout),
        }
    finally:
        stack.stop()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    sim, rec = result["simulation"], result["recalculation"]
    print(f"\n{'members (facts)':<36}{result['members']:>10}  ({seeded['facts']} facts)")
    print(f"{'seed (s)':<36}{seeded['seconds']:>10}")
    print(f"{'simulate, median of 3 (s)':<36}{result['simulate_seconds']['median']:>10}")
    print(f"{'  current tiers':<36}{json.dumps(sim['current'])}")
    print(f"{'  proposed tiers':<36}{json.dumps(sim['proposed'])}")
    print(f"{'  moves':<36}{json.dumps(sim['moves'])}")
    print(f"{'recalculation, POST to done (s)':<36}{rec['seconds']:>10}  ({rec['members_per_s']} members/s)")
    print(f"{'  moved':<36}{rec['moved']:>10}")


if __name__ == "__main__":
    main()

"""CPU an idle platform burns, per process, for a given consumer fetch wait.

    .venv/bin/python bench/idle_cpu.py                 # fetch_max_wait_ms 20 (the default) and 500

Tansu answers a fetch only when its wait runs out, so a short MEMBERSHIP_FETCH_MAX_WAIT_MS buys
low per-hop latency with polling: this prints what that costs while nothing happens.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.processes import free_port
from devstack.stack import Stack
from shared.settings import SERVICES


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def idle_cpu(wait_ms: int, seconds: float = 10.0) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix="membership-bench-idle-"))
    stack = Stack(
        data_dir=data,
        pg_port=free_port(),
        broker_port=free_port(),
        service_ports={s: free_port() for s in SERVICES},
        env_overrides={"MEMBERSHIP_FETCH_MAX_WAIT_MS": str(wait_ms)},
    )
    stack.start_infrastructure()
    try:
        stack.start_services()
        stack.wait_ready()
        time.sleep(5)  # let the consumer groups settle
        pids = {name: p.pid for name, p in stack.procs.items()}
        pids["broker"] = stack.broker.proc.pid  # type: ignore[union-attr]
        before = {n: cpu_ticks(p) for n, p in pids.items()}
        time.sleep(seconds)
        after = {n: cpu_ticks(p) for n, p in pids.items()}
        tick = os.sysconf("SC_CLK_TCK")
        return {n: round((after[n] - before[n]) / tick / seconds * 100, 1) for n in pids}
    finally:
        stack.stop()


def main() -> None:
    waits = [int(w) for w in sys.argv[1:]] or [20, 500]
    results = {w: idle_cpu(w) for w in waits}
    print(json.dumps({f"fetch_max_wait_ms={w}": r for w, r in results.items()}))
    for w, r in results.items():
        print(
            f"fetch_max_wait_ms={w:<5} broker {r['broker']:>5}% of a core, workers "
            f"{sum(v for k, v in r.items() if k.endswith('-worker')):>5}%, total {sum(r.values()):>5}%"
        )


if __name__ == "__main__":
    main()

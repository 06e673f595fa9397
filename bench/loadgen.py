"""A small HTTP/1.1 load generator for the benchmarks: keep-alive connections over asyncio streams.

httpx costs a few hundred microseconds of Python per request; at 500 requests/s on a 2-core
machine that would be the load generator competing with the platform it measures. This client
writes the request bytes itself and reads the response by its Content-Length (the APIs always
send one), so a request costs the generator tens of microseconds.

Latency is measured from when a request was *due* (open loop, :func:`open_loop`), not from when
a connection was free, so a saturated server shows as queueing, not as a lower rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    elapsed_s: float = 0.0

    @property
    def done(self) -> int:
        return len(self.latencies_ms)

    def ok(self, *codes: int) -> int:
        return sum(n for s, n in self.statuses.items() if s in codes)


class Pool:
    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.free: asyncio.Queue[Connection] = asyncio.Queue()

    async def __aenter__(self) -> Pool:
        for _ in range(self.size):
            self.free.put_nowait(await Connection.open(self.host, self.port))
        return self

    async def __aexit__(self, *_: object) -> None:
        while not self.free.empty():
            self.free.get_nowait().close()

    async def send(self, raw: bytes) -> int:
        conn = await self.free.get()
        try:
            status, _ = await conn.request(raw)
        except Exception:
            conn.close()
            self.free.put_nowait(await Connection.open(self.host, self.port))
            raise
        self.free.put_nowait(conn)
        return status


async def open_loop(pool: Pool, rate: float, seconds: float, make: Callable[[int], bytes]) -> Result:
    """Send ``rate`` requests per second for ``seconds``, each at its due time, whatever the answers."""
    result = Result()
    loop = asyncio.get_running_loop()
    started = loop.time()
    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, due: float) -> None:
        try:
            status = await pool.send(make(i))
        except Exception:
            result.errors += 1
            return
        result.latencies_ms.append((loop.time() - due) * 1000)
        result.statuses[status] = result.statuses.get(status, 0) + 1

    for i in range(total):
        due = started + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    result.elapsed_s = loop.time() - started
    return result


async def closed_loop(pool: Pool, seconds: float, make: Callable[[int], bytes]) -> Result:
    """Every connection sends its next request as soon as it has the answer, for ``seconds``."""
    result = Result()
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                status = await pool.send(make(next(counter)))
            except Exception:
                result.errors += 1
                continue
            result.latencies_ms.append((time.perf_counter() - sent) * 1000)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(pool.size)))
    result.elapsed_s = time.perf_counter() - started
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

"""A small per-process cache whose entries expire after a fixed time: API keys, chains, time zones
and programme versions are read on every request or event and change rarely."""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Missing(enum.Enum):
    """What :meth:`TTLCache.get` returns for a key it does not hold (``None`` may be a cached value)."""

    MISSING = enum.auto()


MISSING = Missing.MISSING


class TTLCache(Generic[K, V]):
    """Entries live ``seconds`` (0: nothing is kept); ``clock`` is monotonic seconds (a test's fake)."""

    def __init__(self, seconds: float, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | Missing:
        hit = self._entries.get(key)
        if hit is None:
            return MISSING
        if self.clock() - hit[0] >= self.seconds:
            del self._entries[key]
            return MISSING
        return hit[1]

    def put(self, key: K, value: V) -> V:
        if self.seconds > 0:
            if len(self._entries) >= self.max_entries:  # bounded: drop the oldest entries first
                for old in list(self._entries)[: max(1, self.max_entries // 10)]:
                    del self._entries[old]
            self._entries[key] = (self.clock(), value)
        return value

    def invalidate(self, key: K | None = None) -> None:
        """Forget ``key`` (every key when None)."""
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop(key, None)

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        hit = self.get(key)
        if hit is not MISSING:
            return hit
        return self.put(key, await load())

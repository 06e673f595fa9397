"""Time, behind one small interface so schedules and tests can control it.

In production every service uses :class:`SystemClock`. For scenario tests that
live through a member's year, ``MEMBERSHIP_CLOCK_FILE`` names a file holding an
offset in seconds that every process adds to real time (re-read when it changes).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class OffsetFileClock:
    """Real time plus the offset written in ``path`` (seconds, may be fractional)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._offset = timedelta()

    def now(self) -> datetime:
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime != self._mtime:
                self._offset = timedelta(seconds=float(self.path.read_text().strip() or 0))
                self._mtime = mtime
        except (FileNotFoundError, ValueError):
            self._offset = timedelta()
        return datetime.now(UTC) + self._offset

    def set_offset(self, seconds: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(seconds))
        os.replace(tmp, self.path)


def utcnow() -> datetime:
    return datetime.now(UTC)

"""``membershipctl import members|purchases FILE``: stream a chain's history through the batch APIs.

* Any size, constant memory: the file is read a line at a time, sent ``batch_size`` rows per
  request (one transaction each on the server).
* Resumable: after every acknowledged batch, ``FILE.progress`` records the byte offset reached
  (written atomically). A second run starts there. A batch that was applied but not yet recorded
  (a crash between the two) is sent again and answered "exists" row by row: nothing is counted
  twice, because every row is idempotent on its natural key (a member's id or phone, a purchase's
  clinic and POS transaction id).
* Rejected rows go to ``FILE.rejects.csv`` with the problem, the rest carries on.

CSV files have a header row; list and object fields (a purchase's ``items``, a member's
``consents``) are JSON in their cell. NDJSON files have one JSON object per line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .client import USAGE, Client, CliError

Kind = Literal["members", "purchases"]
JSON_FIELDS = {"items", "consents"}
INT_FIELDS = {"amount_fen"}


@dataclass
class Summary:
    created: int = 0
    exists: int = 0
    rejected: int = 0
    batches: int = 0
    resumed_at_row: int = 0
    seconds: float = 0.0
    rows: int = field(default=0)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".progress")


def rejects_path(path: Path) -> Path:
    return path.with_name(path.name + ".rejects.csv")


def _csv_row(header: list[str], line: str) -> dict[str, Any]:
    values = next(csv.reader([line]))
    row: dict[str, Any] = {}
    for name, value in zip(header, values, strict=False):
        if value == "":
            continue
        if name in JSON_FIELDS:
            row[name] = json.loads(value)
        elif name in INT_FIELDS:
            row[name] = int(value)
        else:
            row[name] = value
    return row


def read_rows(path: Path, start: int) -> Iterator[tuple[int, str, dict[str, Any] | str]]:
    """(offset after the line, the raw line, the parsed row or why it cannot be parsed) from ``start``."""
    is_csv = path.suffix.lower() == ".csv"
    with path.open("rb") as f:
        header: list[str] = []
        if is_csv:
            first = f.readline().decode("utf-8-sig")
            header = next(csv.reader([first]))
            start = max(start, f.tell())
        f.seek(start)
        while True:
            raw = f.readline()
            if not raw:
                return
            offset = f.tell()
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line.strip():
                continue
            try:
                parsed: dict[str, Any] | str = _csv_row(header, line) if is_csv else json.loads(line)
                if not isinstance(parsed, dict):
                    parsed = "not a JSON object"
            except (ValueError, csv.Error, StopIteration) as exc:
                parsed = f"unreadable row: {exc}"
            yield offset, line, parsed


def _save_progress(path: Path, offset: int, rows: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"offset": offset, "rows": rows}))
    os.replace(tmp, path)


def _load_progress(path: Path) -> tuple[int, int]:
    try:
        doc = json.loads(path.read_text())
        return int(doc["offset"]), int(doc["rows"])
    except FileNotFoundError:
        return 0, 0
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{path} is damaged ({exc}); delete it to start over", USAGE) from exc


def import_file(
    client: Client,
    kind: Kind,
    path: Path,
    *,
    batch_size: int = 500,
    restart: bool = False,
    on_progress: Callable[[int, int, Summary], None] | None = None,
) -> Summary:
    """Send the file's rows in batches; returns what happened. ``on_progress(bytes_done, bytes_total, summary)``."""
    if not path.is_file():
        raise CliError(f"no such file: {path}", USAGE)
    if not 1 <= batch_size <= 1000:
        raise CliError("--batch-size must be between 1 and 1000", USAGE)
    progress_file, rejects_file = progress_path(path), rejects_path(path)
    if restart:
        progress_file.unlink(missing_ok=True)
        rejects_file.unlink(missing_ok=True)
    start, done_rows = _load_progress(progress_file)
    summary = Summary(resumed_at_row=done_rows, rows=0)
    total = path.stat().st_size
    new_rejects = not rejects_file.exists()
    started = time.monotonic()
    with rejects_file.open("a", newline="", encoding="utf-8") as rf:
        rejects = csv.writer(rf)
        if new_rejects:
            rejects.writerow(["row", "problem", "line"])
        # rows read since the last acknowledged batch: (row number, line, parsed row or why unreadable);
        # unreadable rows are written to the rejects file with their batch, so a resumed run, which
        # reads them again, does not report them twice
        batch: list[tuple[int, str, dict[str, Any] | str]] = []
        row_no = done_rows
        last_offset = start

        def flush() -> None:
            nonlocal batch
            if not batch:
                return
            sendable = [i for i, (_, _, r) in enumerate(batch) if isinstance(r, dict)]
            outcomes: dict[int, tuple[str, Any]] = {
                i: ("rejected", r) for i, (_, _, r) in enumerate(batch) if isinstance(r, str)
            }
            if sendable:
                result = client.post("enrollment", f"/v1/{kind}/batch", {"items": [batch[i][2] for i in sendable]})
                for outcome in result["items"]:
                    outcomes[sendable[outcome["index"]]] = (outcome["status"], outcome.get("problem"))
            for i, (number, line, _) in enumerate(batch):
                status, problem = outcomes[i]
                if status == "created":
                    summary.created += 1
                elif status == "exists":
                    summary.exists += 1
                else:
                    summary.rejected += 1
                    rejects.writerow([number, _problem_text(problem), line])
            rf.flush()
            summary.batches += 1
            summary.rows += len(batch)
            _save_progress(progress_file, last_offset, row_no)
            batch = []

        for offset, line, parsed in read_rows(path, start):
            row_no += 1
            batch.append((row_no, line, parsed))
            last_offset = offset
            if len(batch) >= batch_size:
                flush()
                if on_progress:
                    summary.seconds = time.monotonic() - started
                    on_progress(offset, total, summary)
        flush()
    summary.seconds = time.monotonic() - started
    if on_progress:
        on_progress(total, total, summary)
    progress_file.unlink(missing_ok=True)  # finished: a next run of the same file starts over
    if summary.rejected == 0 and rejects_file.exists() and new_rejects:
        rejects_file.unlink()
    return summary


def _problem_text(problem: Any) -> str:
    if not isinstance(problem, dict):
        return str(problem)
    errors = problem.get("errors")
    if errors:
        return "; ".join(f"{'.'.join(map(str, e.get('location', [])))}: {e.get('message')}" for e in errors)
    return str(problem.get("detail") or problem.get("title") or problem)


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """A small CSV writer for tests and the generator (JSON in the cells of list/object fields)."""
    buf = io.StringIO()
    if not rows:
        return ""
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if k in JSON_FIELDS else v for k, v in r.items()})
    return buf.getvalue()

"""Two ``bench/run.py`` result files side by side, as a Markdown table (for the README and closing notes).

.venv/bin/python bench/compare.py bench/results/2026-11-30-before-c9c4e5e.json bench/results/2026-11-30.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(row: dict[str, object] | None) -> str:
    if row is None:
        return "-"
    median = row["median"]
    assert isinstance(median, (int, float))
    value = "no answer" if median == float("inf") else f"{median:,.1f} {row['unit']}"
    runs = row["runs"]
    assert isinstance(runs, list)
    spread = "" if len(runs) < 2 else f" (runs: {', '.join('∞' if r == float('inf') else f'{r:,.0f}' for r in runs)})"
    return f"{value}{spread} {row['verdict']}".strip()


def main() -> None:
    before, after = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    rows_before = {r["key"]: r for r in before["rows"]}
    rows_after = {r["key"]: r for r in after["rows"]}
    print("| what | budget | before | after |")
    print("|---|---|---|---|")
    for key in [*rows_after, *(k for k in rows_before if k not in rows_after)]:
        ref = rows_after.get(key) or rows_before[key]
        print(f"| {ref['what']} | {ref['budget']} | {cell(rows_before.get(key))} | {cell(rows_after.get(key))} |")


if __name__ == "__main__":
    main()

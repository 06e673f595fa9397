"""Write a realistic, seeded history of a chain for ``membershipctl import`` (and the import benchmark).

    python bench/make_history.py --members 100000 --purchases 1000000 --out /tmp/history

writes ``members.csv`` and ``purchases.ndjson``: members enrolled over the last ``--years`` years at
``--clinics`` clinics, and their purchases since enrolment (a few big spenders, many small ones,
treatment categories as in the seed articles), each purchase's items adding up to its amount. The
same seed writes the same files, byte for byte; member ids are fixed so purchases can name them.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

CATEGORIES = [
    ("injectables", "玻尿酸", 180_000, 680_000),
    ("injectables", "肉毒素", 120_000, 380_000),
    ("laser", "光子嫩肤", 80_000, 260_000),
    ("laser", "皮秒", 150_000, 480_000),
    ("skincare", "水光针", 60_000, 200_000),
    ("skincare", "清洁护理", 19_800, 58_000),
    ("products", "修护面膜", 9_800, 39_800),
    ("body", "塑形", 200_000, 900_000),
]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "静丽敏燕艳娟霞芳娜秀英华玉萍红玲芬梅琳雪婷颖"
SOURCES = ["walk_in", "online", "event", "walk_in", "walk_in"]


def _phone(rng: random.Random, taken: set[str]) -> str:
    while True:
        phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        if phone not in taken:
            taken.add(phone)
            return phone


def write_history(
    out: Path, *, members: int, purchases: int, clinics: int, years: float, seed: int, now: datetime
) -> tuple[Path, Path]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    members_path, purchases_path = out / "members.csv", out / "purchases.ndjson"
    span = timedelta(days=365 * years)
    enrolled: list[tuple[str, datetime, str, float]] = []  # id, enrolled_at, home clinic, spending weight
    phones: set[str] = set()
    with members_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["member_id", "phone", "name", "birthday", "home_clinic_id", "source", "enrolled_at"])
        for _ in range(members):
            member_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            at = now - span + timedelta(seconds=rng.randrange(int(span.total_seconds())))
            clinic = f"clinic-{rng.randrange(clinics) + 1}"
            birthday = date(rng.randrange(1965, 2004), rng.randrange(1, 13), rng.randrange(1, 29))
            name = rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.6 else "")
            writer.writerow(
                [
                    member_id,
                    _phone(rng, phones),
                    name,
                    birthday.isoformat(),
                    clinic,
                    rng.choice(SOURCES),
                    at.isoformat(),
                ]
            )
            # a few members spend most: a Pareto weight per member
            enrolled.append((member_id, at, clinic, rng.paretovariate(1.3)))
    weights = [w for *_, w in enrolled]
    with purchases_path.open("w", encoding="utf-8") as f:
        chosen = rng.choices(range(len(enrolled)), weights=weights, k=purchases) if enrolled else []
        for n, i in enumerate(chosen):
            member_id, since, home, _ = enrolled[i]
            occurred = since + timedelta(seconds=rng.randrange(max(1, int((now - since).total_seconds()))))
            category, label, low, high = rng.choice(CATEGORIES)
            amount = rng.randrange(low, high, 100)
            items = [{"sku": f"{category}-{label}", "category": category, "amount_fen": amount, "qty": 1}]
            if rng.random() < 0.3:  # an add-on product on the same ticket
                extra = rng.randrange(9_800, 39_800, 100)
                items.append({"sku": "products-修护面膜", "category": "products", "amount_fen": extra, "qty": 1})
                amount += extra
            clinic = home if rng.random() < 0.85 else f"clinic-{rng.randrange(clinics) + 1}"
            doc = {
                "pos_txn_id": f"h{seed}-{n:09d}",
                "clinic_id": clinic,
                "member_id": member_id,
                "amount_fen": amount,
                "currency": "CNY",
                "occurred_at": occurred.isoformat(),
                "items": items,
            }
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return members_path, purchases_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--purchases", type=int, default=10_000)
    parser.add_argument("--clinics", type=int, default=20)
    parser.add_argument("--years", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("history"))
    parser.add_argument("--now", help="the history ends at this ISO-8601 instant (default: now)")
    args = parser.parse_args()
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC).replace(microsecond=0)
    m, p = write_history(
        args.out,
        members=args.members,
        purchases=args.purchases,
        clinics=args.clinics,
        years=args.years,
        seed=args.seed,
        now=now,
    )
    print(f"{m}\n{p}")


if __name__ == "__main__":
    main()

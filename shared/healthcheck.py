"""``python -m shared.healthcheck``: the container image's HEALTHCHECK, for whichever process the container runs.

It asks ``/healthz`` of the process started as ``python -m <service> api|worker`` in this container (read
from ``/proc/1/cmdline``; ``MEMBERSHIP_HEALTHCHECK_URL`` wins when set), on the port its settings give it
(``MEMBERSHIP_<SERVICE>_PORT``, ``MEMBERSHIP_<SERVICE>_WORKER_PORT``). Exit 0 when it answers 200, 1 when not;
a container running anything else (a migration, the topic init, membershipctl) has nothing to ask: 0.
Standard library and settings only, so it starts fast.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .settings import SERVICES, Settings


def target(argv: Sequence[str], settings: Settings) -> str | None:
    """The health URL of the process started with ``argv``, or None if it serves none."""
    args = list(argv)
    for i, arg in enumerate(args[:-2]):
        if arg == "-m" and args[i + 1] in SERVICES and args[i + 2] in ("api", "worker"):
            service, role = args[i + 1], args[i + 2]
            port = settings.port_of(service) if role == "api" else settings.worker_port_of(service)
            return f"http://127.0.0.1:{port}/healthz"
    return None


def main_process_argv(proc: Path = Path("/proc/1/cmdline")) -> list[str]:
    try:
        return [a for a in proc.read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


def main() -> int:
    url = os.environ.get("MEMBERSHIP_HEALTHCHECK_URL") or target(main_process_argv(), Settings())
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``membershipctl status``: one row per service of what the pipeline's health is made of."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from shared.settings import SERVICES, Settings

from .client import Client, CliError


def worker_url(service: str) -> str:
    """``MEMBERSHIP_WORKER_URL_<SERVICE>``, or where ``make run``'s worker serves its endpoint."""
    default = f"http://127.0.0.1:{Settings.model_fields[f'{service}_worker_port'].default}"
    return os.environ.get(f"MEMBERSHIP_WORKER_URL_{service.upper()}", default).rstrip("/")


def _get(http: httpx.Client, url: str) -> dict[str, Any] | None:
    try:
        r = http.get(url, timeout=3.0)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    doc: dict[str, Any] = r.json()
    return doc


def service_status(client: Client, service: str) -> dict[str, Any]:
    http = client.http
    api_up = _get(http, client.urls[service] + "/healthz") is not None
    worker = _get(http, worker_url(service) + "/status")
    row: dict[str, Any] = {
        "service": service,
        "api_up": api_up,
        "worker_up": worker is not None and all(worker.get("tasks", {}).values()),
        "consumer_lag": (worker or {}).get("consumer_lag", {}),
        "outbox_backlog": None,
        "outbox_oldest_age_seconds": None,
        "dead_letters_parked": None,
        "last_error": ((worker or {}).get("last_error") or {}).get("message"),
    }
    if worker is not None:
        stopped = [name for name, alive in worker.get("tasks", {}).items() if not alive]
        if stopped:
            row["last_error"] = f"tasks stopped: {', '.join(stopped)}; " + (row["last_error"] or "")
    if api_up:
        try:
            health = client.get(service, "/v1/ops/status")
            row["outbox_backlog"] = health["outbox"]["backlog"]
            row["outbox_oldest_age_seconds"] = health["outbox"]["oldest_age_seconds"]
            row["dead_letters_parked"] = health["dead_letters"]["parked"]
        except CliError as exc:
            row["last_error"] = exc.message
    return row


def pipeline_status(client: Client) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(len(SERVICES)) as pool:
        return list(pool.map(lambda s: service_status(client, s), SERVICES))


def healthy(rows: list[dict[str, Any]]) -> bool:
    return all(r["api_up"] and r["worker_up"] for r in rows)

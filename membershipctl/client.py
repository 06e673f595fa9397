"""The HTTP side of the CLI: where each service is, which key to send, and what a failure means.

Exit codes scripts can trust: 0 done; 1 the platform refused the request (a 4xx problem: bad
input, unknown id, conflict); 2 wrong usage of the command; 3 a service could not be reached
or failed (5xx); 4 the key was refused (401/403).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.settings import DEFAULT_PORTS, SERVICES

OK, REFUSED, USAGE, UNAVAILABLE, UNAUTHORIZED = 0, 1, 2, 3, 4


class CliError(Exception):
    """A failure to report in one line and exit with ``code``."""

    def __init__(self, message: str, code: int = REFUSED, problem: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.problem = problem


def service_url(service: str) -> str:
    """``MEMBERSHIP_URL_<SERVICE>``, or where ``make run`` serves it."""
    default = f"http://127.0.0.1:{DEFAULT_PORTS[service]}"
    return os.environ.get(f"MEMBERSHIP_URL_{service.upper()}", default).rstrip("/")


@dataclass
class Client:
    key: str | None
    urls: dict[str, str] = field(default_factory=lambda: {s: service_url(s) for s in SERVICES})
    timeout: float = 30.0
    _http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def call(
        self,
        method: str,
        service: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        expect_json: bool = True,
    ) -> Any:
        if not self.key:
            raise CliError("No API key: pass --key or set MEMBERSHIP_KEY.", USAGE)
        h = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        url = self.urls[service] + path
        try:
            r = self.http.request(method, url, json=body, params=clean, headers=h)
        except httpx.HTTPError as exc:
            raise CliError(f"{service} is unreachable at {self.urls[service]}: {exc}", UNAVAILABLE) from exc
        if r.status_code >= 400:
            raise _failure(service, r)
        if not expect_json or r.status_code == 204 or not r.content:
            return None
        return r.json()

    def get(self, service: str, path: str, **kw: Any) -> Any:
        return self.call("GET", service, path, **kw)

    def post(self, service: str, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("POST", service, path, body=body, **kw)

    def pages(self, service: str, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Every item of a paginated list (``items`` + ``next_cursor``)."""
        items: list[Any] = []
        cursor = None
        while True:
            page = self.get(service, path, params={**(params or {}), "cursor": cursor})
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


def _failure(service: str, r: httpx.Response) -> CliError:
    try:
        problem = r.json()
    except ValueError:
        problem = None
    detail = problem.get("detail") if isinstance(problem, dict) else None
    message = f"{service}: {r.status_code} {detail or r.reason_phrase}"
    if r.status_code in (401, 403):
        return CliError(message, UNAUTHORIZED, problem)
    if r.status_code >= 500:
        return CliError(message, UNAVAILABLE, problem)
    return CliError(message, REFUSED, problem)

"""What the integration and end-to-end tests share: HTTP clients per service, polling, fixtures' parts."""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
from standardwebhooks import Webhook, WebhookVerificationError

from shared.settings import DEVELOPMENT_WEBHOOK_SECRET

T = TypeVar("T")

POS = "dev-pos-key-0000000000000000"
APP = "dev-app-key-0000000000000000"
OPS = "dev-ops-key-0000000000000000"
WEBHOOK_SECRET = DEVELOPMENT_WEBHOOK_SECRET


def eventually(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Call ``check`` until it stops raising AssertionError (or returns truthy), then return its value."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result is not False and result is not None:
                return result
        except (AssertionError, httpx.HTTPError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    if last:
        raise AssertionError(f"not true after {timeout}s: {last}") from last
    raise AssertionError(f"not true after {timeout}s")


class Api:
    """One httpx client per service of a running stack, with the demo chain's keys."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.http = httpx.Client(timeout=30.0)

    def call(
        self,
        method: str,
        service: str,
        path: str,
        *,
        key: str | None = APP,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        return self.http.request(method, self.urls[service] + path, json=json_body, headers=h, params=params)

    def get(self, service: str, path: str, **kw: Any) -> httpx.Response:
        return self.call("GET", service, path, **kw)

    def post(self, service: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.call("POST", service, path, json_body=body, **kw)

    def put(self, service: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.call("PUT", service, path, json_body=body, **kw)

    def patch(self, service: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.call("PATCH", service, path, json_body=body, **kw)

    # -- the main path's building blocks ------------------------------------------------------

    def enrol(self, **overrides: Any) -> dict[str, Any]:
        body = {
            "phone": "139" + str(uuid.uuid4().int)[:8],
            "name": "测试会员",
            "birthday": "1990-06-15",
            "home_clinic_id": "clinic-1",
            "source": "walk_in",
            "consents": {"marketing": True, "sms": True, "email": False},
        }
        body.update(overrides)
        r = self.post("enrollment", "/v1/members", body, key=APP)
        assert r.status_code == 201, r.text
        return r.json()

    def purchase(
        self,
        member_id: str,
        amount_fen: int,
        *,
        occurred_at: datetime | None = None,
        pos_txn_id: str | None = None,
        clinic_id: str = "clinic-1",
    ) -> dict[str, Any]:
        body = purchase_body(member_id, amount_fen, occurred_at=occurred_at, pos_txn_id=pos_txn_id, clinic_id=clinic_id)
        r = self.post("enrollment", "/v1/purchases", body, key=POS)
        assert r.status_code in (200, 202), r.text
        return r.json()


def purchase_body(
    member_id: str,
    amount_fen: int,
    *,
    occurred_at: datetime | None = None,
    pos_txn_id: str | None = None,
    clinic_id: str = "clinic-1",
) -> dict[str, Any]:
    return {
        "pos_txn_id": pos_txn_id or f"txn-{uuid.uuid4()}",
        "clinic_id": clinic_id,
        "member_id": member_id,
        "amount_fen": amount_fen,
        "currency": "CNY",
        "occurred_at": (occurred_at or datetime.now(UTC)).isoformat(),
        "items": [{"sku": "hydrafacial", "category": "skin_care", "amount_fen": amount_fen, "qty": 1}],
    }


def is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    doc = r.json()
    assert doc["status"] == status and doc["title"] and doc["type"] and "detail" in doc
    return doc


class WebhookReceiver:
    """A chain's webhook endpoint that verifies as the README tells receivers to: the Standard Webhooks
    signature with the ``standardwebhooks`` package (which refuses a timestamp more than 5 minutes
    off), and each ``webhook-id`` processed once. ``requests`` holds the deliveries it accepted;
    ``rejected`` the others with the reason (a bad signature or an old timestamp is answered 401, a
    ``webhook-id`` already processed 200 without processing it again). Fails the next ``fail_next``
    deliveries with 503 on demand."""

    def __init__(self, secret: str = WEBHOOK_SECRET) -> None:
        self.requests: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.fail_next = 0
        self.webhook = Webhook(secret)
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                self.send_response(receiver.receive(headers, body, self.path))
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def receive(self, headers: dict[str, str], body: bytes, path: str = "/") -> int:
        """What the endpoint does with one delivery; returns the HTTP status it answers."""
        request = {"headers": headers, "body": body, "path": path}
        try:
            self.webhook.verify(body, headers)
        except WebhookVerificationError as exc:
            self.rejected.append({**request, "reason": str(exc)})
            return 401
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503
            message_id = headers["webhook-id"]
            if message_id in self.seen:
                self.rejected.append({**request, "reason": "webhook-id already processed"})
                return 200  # acknowledged, so the sender stops; not processed a second time
            self.seen.add(message_id)
            self.requests.append(request)
        return 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/membership"

    def for_member(self, member_id: str) -> list[dict[str, Any]]:
        out = []
        for r in list(self.requests):
            doc = json.loads(r["body"])
            if doc.get("member_id") == member_id:
                out.append({**r, "json": doc})
        return out

    @staticmethod
    def signature_ok(request: dict[str, Any], secret: str = WEBHOOK_SECRET) -> bool:
        """The delivery's Standard Webhooks signature is right for ``secret`` (checked with the same
        package, at the timestamp it was sent with: the receiver checked the timestamp on arrival)."""
        h = request["headers"]
        sent_at = datetime.fromtimestamp(int(h["webhook-timestamp"]), UTC)
        expected = Webhook(secret).sign(h["webhook-id"], sent_at, request["body"].decode())
        return any(hmac.compare_digest(expected, sig) for sig in h["webhook-signature"].split(" "))

    def close(self) -> None:
        self.server.shutdown()


def publish_events(bootstrap: str, events: list[Any], *, raw: list[tuple[str, bytes, bytes]] | None = None) -> None:
    """Put CloudEvents (and optionally raw (topic, key, value) messages) straight on the broker,
    as another service's relay would: for testing a consumer on its own."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
        await producer.start()
        try:
            for topic, key, value in raw or []:
                await producer.send_and_wait(topic, value=value, key=key)
            for e in events:
                await producer.send_and_wait(e.topic, value=e.to_json(), key=e.subject.encode())
        finally:
            await producer.stop()

    asyncio.run(go())

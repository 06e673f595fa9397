"""A fake SMS provider: a real HTTP server on a free local port that behaves like a provider honouring
``Idempotency-Key`` (a message id it has sent before is acknowledged and not sent again).

``answers`` scripts the next responses (a status, or ``(status, delay_seconds)``; a delay makes the
sender time out while the provider goes on and SENDS the message: the lost-acknowledgement case);
once it is empty every request gets ``default``. ``requests`` holds every request received,
``sent`` the messages actually sent, one per idempotency key.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "sms-test-token-7f3a"


class SmsProvider:
    def __init__(self, token: str = TOKEN, auth_header: str = "Authorization") -> None:
        self.token = token
        self.auth_header = auth_header
        self.answers: list[int | tuple[int, float]] = []
        self.default = 200
        self.requests: list[dict[str, Any]] = []
        self.sent: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = provider.receive({k.lower(): v for k, v in self.headers.items()}, body, self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/sms"

    def receive(self, headers: dict[str, str], body: bytes, path: str) -> int:
        with self.lock:
            answer = self.answers.pop(0) if self.answers else self.default
            self.requests.append({"headers": headers, "body": body, "path": path, "json": json.loads(body)})
        status, delay = (answer, 0.0) if isinstance(answer, int) else answer
        expected = f"Bearer {self.token}" if self.auth_header.lower() == "authorization" else self.token
        if headers.get(self.auth_header.lower()) != expected:
            return 401
        if 200 <= status < 300:
            key = headers.get("idempotency-key", "")
            with self.lock:
                if key not in self.sent:  # a provider honouring the key sends each message once
                    self.sent[key] = json.loads(body)
        time.sleep(delay)  # the message is sent; the acknowledgement comes late (or too late)
        return status

    def requests_for(self, message_id: str) -> list[dict[str, Any]]:
        return [r for r in list(self.requests) if r["headers"].get("idempotency-key") == message_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

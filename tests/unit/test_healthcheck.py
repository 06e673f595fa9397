"""The image's HEALTHCHECK (``python -m shared.healthcheck``) asks the container's own process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from shared import healthcheck
from shared.settings import Settings


def test_the_target_follows_the_process_and_its_port_settings() -> None:
    s = Settings(points_port=18002, points_worker_port=19002)
    assert healthcheck.target(["python", "-m", "points", "api"], s) == "http://127.0.0.1:18002/healthz"
    assert healthcheck.target(["/opt/venv/bin/python", "-m", "points", "worker"], s) == "http://127.0.0.1:19002/healthz"
    assert healthcheck.target(["python", "-m", "enrollment", "api"], Settings()) == "http://127.0.0.1:8001/healthz"
    # processes that serve nothing: a migration, the topic init, the CLI
    assert healthcheck.target(["python", "-m", "points", "migrate"], s) is None
    assert healthcheck.target(["python", "-m", "shared.topics"], s) is None
    assert healthcheck.target(["membershipctl", "bootstrap"], s) is None
    assert healthcheck.target([], s) is None


def test_the_main_process_is_read_from_proc(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"python\0-m\0notify\0worker\0")
    assert healthcheck.main_process_argv(cmdline) == ["python", "-m", "notify", "worker"]
    assert healthcheck.main_process_argv(tmp_path / "missing") == []


@pytest.fixture
def server() -> Iterator[tuple[str, list[int]]]:
    status = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/healthz", status
    httpd.shutdown()
    httpd.server_close()


def test_healthy_only_when_the_endpoint_answers_200(
    server: tuple[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, status = server
    monkeypatch.setenv("MEMBERSHIP_HEALTHCHECK_URL", url)
    assert healthcheck.main() == 0
    status[0] = 503
    assert healthcheck.main() == 1
    monkeypatch.setenv("MEMBERSHIP_HEALTHCHECK_URL", "http://127.0.0.1:9/healthz")  # nothing listens there
    assert healthcheck.main() == 1

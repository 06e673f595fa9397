"""``make run``: the whole platform on its embedded default, until Ctrl-C."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from shared.settings import DEFAULT_PORTS, Settings

from .stack import Stack


def main() -> None:
    settings = Settings()
    data_dir = Path(os.environ.get("MEMBERSHIP_DATA_DIR", ".data")).resolve()
    ports = {name: settings.port_of(name) for name in DEFAULT_PORTS}
    stack = Stack(
        data_dir=data_dir,
        pg_port=int(os.environ.get("MEMBERSHIP_PG_PORT", "5432")),
        broker_port=int(os.environ.get("MEMBERSHIP_BROKER_PORT", "9092")),
        service_ports=ports,
        worker_ports={name: settings.worker_port_of(name) for name in DEFAULT_PORTS},
        env_overrides={"MEMBERSHIP_NOTIFY_SINK_DIR": str(data_dir / "sink")},
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(
            f"starting PostgreSQL on 127.0.0.1:{stack.pg_port} (data in {data_dir / 'pg'}) "
            f"and Tansu on 127.0.0.1:{stack.broker_port} ...",
            flush=True,
        )
        stack.start_infrastructure()
        stack.start_services()
        took = stack.wait_ready()
        s = stack.settings()
        print(f"\nmembership platform ready in {took:.1f}s\n", flush=True)
        for name, port in ports.items():
            print(
                f"  {name:<11} http://127.0.0.1:{port}   (docs: http://127.0.0.1:{port}/docs;"
                f" worker metrics: http://127.0.0.1:{stack.worker_ports[name]}/metrics)"
            )
        assert stack.postgres is not None and stack.broker is not None  # both started above
        print(f"\n  PostgreSQL  {stack.postgres.url}")
        print(f"  broker      {stack.broker.bootstrap}")
        print(f"  logs        {stack.log_dir}/   notification sink: {data_dir / 'sink'}/")
        print(f"\n  demo chain  {s.demo_chain_id}")
        print(f"  pos key     {s.demo_pos_key}\n  app key     {s.demo_app_key}\n  ops key     {s.demo_ops_key}")
        print(f"  platform key {s.demo_platform_key}   (onboards more chains: membershipctl chains create ...)")
        print("\nCtrl-C stops everything.", flush=True)
        while not stopping:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited ({proc.returncode}); restarting it", flush=True)
                    service, role = name.rsplit("-", 1)
                    stack.start_process(service, role)
                    break
            time.sleep(0.5)
    except Exception as exc:
        print(f"failed: {exc}", file=sys.stderr)
        raise
    finally:
        print("\nstopping ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)


if __name__ == "__main__":
    main()

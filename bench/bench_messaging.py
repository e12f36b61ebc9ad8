"""Publish and consume throughput of the messaging API on each broker, against the real services.

    .venv/bin/python bench/bench_messaging.py                 # N=20000, both brokers
    .venv/bin/python bench/bench_messaging.py --n 5000 --brokers kafka

Starts the Pub/Sub emulator and a Kafka broker through ``devservices`` (or uses running ones with
``--reuse`` and PUBSUB_EMULATOR_HOST / KAFKA_BOOTSTRAP_SERVERS), then for each broker and payload
(1 KB JSON dict, 784-byte binary pixels with attributes):

* publish: N non-blocking ``publish()`` calls, timed until every future has resolved;
* consume: the N messages read back through ``listen()`` (and ``listen_batch()`` on Kafka) with a
  callback that only counts; the rate is taken from the first to the last message, and the time to
  the first message (subscription / group join) is reported on its own.

Prints a table and writes ``bench/results/messaging.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.messaging import BasicListener, BasicPublisher, Message, make_listener, make_publisher  # noqa: E402
from common.settings import Settings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "messaging.json"


def json_payload(i: int) -> dict[str, Any]:
    """About 1 KB of JSON once encoded (a request-sized dict)."""
    return {"request_id": f"bench-{i:08d}", "model": "fashion-cnn", "top_k": 3, "pad": "x" * 940}


PIXELS = bytes(range(256)) * 3 + bytes(16)  # 784 bytes
PIXEL_ATTRS = {"content_type": "application/x-fashion-pixels", "shape": "1,28,28", "dtype": "uint8"}


def bench_publish(publisher: BasicPublisher, topic: str, n: int, kind: str) -> float:
    """Messages per second from the first publish() to the last confirmed future."""
    started = time.perf_counter()
    if kind == "json_1k":
        futures = [publisher.publish(topic, json_payload(i)) for i in range(n)]
    else:
        futures = [publisher.publish(topic, PIXELS, {**PIXEL_ATTRS, "request_id": f"b-{i}"}) for i in range(n)]
    for f in futures:
        f.result(timeout=120)
    return n / (time.perf_counter() - started)


def bench_consume(listener: BasicListener, n: int, batch: bool) -> tuple[float, float]:
    """(messages per second from first to last message, seconds until the first message)."""
    count = 0
    first_at: float | None = None
    last_at = 0.0
    done = threading.Event()
    lock = threading.Lock()

    def on_messages(messages: list[Message]) -> None:
        nonlocal count, first_at, last_at
        with lock:
            now = time.perf_counter()
            if first_at is None:
                first_at = now
            count += len(messages)
            last_at = now
            if count >= n:
                done.set()
                listener.stop()

    target: Callable[[], None]
    if batch:
        target = lambda: listener.listen_batch(on_messages, max_records=500, max_wait_ms=20)  # type: ignore[attr-defined]  # noqa: E731
    else:
        target = lambda: listener.listen(lambda m: on_messages([m]))  # noqa: E731
    started = time.perf_counter()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    if not done.wait(timeout=max(120.0, n / 100)):
        listener.stop()
        raise RuntimeError(f"only {count} of {n} messages consumed in time")
    thread.join(timeout=60)
    assert first_at is not None
    span = last_at - first_at
    return ((count - 1) / span if span > 0 else float("inf")), first_at - started


def run_broker(name: str, settings: Settings, n: int) -> list[dict[str, Any]]:
    rows = []
    for kind in ("json_1k", "binary_784"):
        topic = f"bench-{kind.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
        source = topic
        if name == "pubsub":
            from common.messaging.pubsub import admin as ps_admin

            ps_admin.ensure_topic(settings.project_id, topic)
            source = ps_admin.ensure_subscription(settings.project_id, topic, f"{topic}-sub").rsplit("/", 1)[1]
        else:
            from common.messaging.kafka import admin as k_admin

            k_admin.ensure_topic(settings.kafka_bootstrap_servers, topic, partitions=3)
        with make_publisher(settings) as publisher:
            pub_rate = bench_publish(publisher, topic, n, kind)
        modes = [("listen", False)] + ([("listen_batch", True)] if name == "kafka" else [])
        for mode, batch in modes:
            options: dict[str, Any] = {}
            if name == "kafka":
                # A fresh group per mode, so each one reads the whole topic from the start.
                options = {"group_id": f"{topic}-{mode}", "session_timeout_ms": 6000,
                           "heartbeat_interval_ms": 1000}
            else:
                options = {"max_messages": 1000}
            listener = make_listener(settings, source, **options)
            try:
                rate, first = bench_consume(listener, n, batch)
            finally:
                listener.close()
            rows.append({"broker": name, "payload": kind, "n": n, "publish_per_s": round(pub_rate),
                         "consume_mode": mode, "consume_per_s": round(rate),
                         "seconds_to_first_message": round(first, 2)})
            print(f"  {name:6} {kind:10} publish {pub_rate:9,.0f}/s   {mode:12} {rate:9,.0f}/s "
                  f"(first message after {first:.2f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages per payload kind (default 20000)")
    parser.add_argument("--brokers", default="pubsub,kafka", help="comma-separated: pubsub,kafka")
    parser.add_argument("--reuse", action="store_true",
                        help="use running services from PUBSUB_EMULATOR_HOST / KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows: list[dict[str, Any]] = []
    for name in [b.strip() for b in args.brokers.split(",") if b.strip()]:
        service: Any = None
        try:
            if name == "pubsub":
                if args.reuse and os.environ.get("PUBSUB_EMULATOR_HOST"):
                    project = os.environ.get("PUBSUB_PROJECT_ID", "local-project")
                else:
                    from devservices import start_pubsub

                    service = start_pubsub()
                    os.environ["PUBSUB_EMULATOR_HOST"] = service.host
                    project = service.project
                settings = Settings.from_env({}, broker="pubsub", project_id=project, publish_timeout_s=60.0)
            elif name == "kafka":
                if args.reuse and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
                    servers = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
                else:
                    from devservices import start_kafka

                    service = start_kafka()
                    servers = service.bootstrap_servers
                settings = Settings.from_env({}, broker="kafka", kafka_bootstrap_servers=servers,
                                             publish_timeout_s=60.0)
            else:
                parser.error(f"unknown broker {name!r}")
            print(f"{name}: {args.n} messages per payload", flush=True)
            rows.extend(run_broker(name, settings, args.n))
        finally:
            if service is not None:
                service.cleanup()

    print()
    header = f"{'broker':7} {'payload':11} {'publish/s':>10} {'consume':13} {'consume/s':>10} {'1st msg s':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['broker']:7} {r['payload']:11} {r['publish_per_s']:>10,} {r['consume_mode']:13} "
              f"{r['consume_per_s']:>10,} {r['seconds_to_first_message']:>9}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "messaging",
        "command": "python bench/bench_messaging.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "results": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

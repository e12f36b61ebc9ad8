"""Command line: ``python -m devservices install`` and ``python -m devservices up [pubsub gcs kafka]``.

``up`` starts the services on their usual ports (Pub/Sub 8085, storage 9023, Kafka 9092/9093; 0 picks a
free one), prints the ``export`` lines that point clients at them, and stays in the foreground until
Ctrl-C or SIGTERM, then stops them all. Example::

    python -m devservices install              # once per machine; quick when all is there
    python -m devservices up kafka pubsub      # then copy the printed export lines into another shell
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from devservices._base import Service
from devservices._proc import ServiceError
from devservices.install import STEPS, install
from devservices.kafka_broker import KafkaBroker
from devservices.pubsub import DEFAULT_PROJECT, PubSubEmulator
from devservices.storage import StorageEmulator

SERVICES = tuple(STEPS)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devservices", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install what the services need (idempotent)")
    inst.add_argument("services", nargs="*", metavar="SERVICE", help=f"any of {', '.join(SERVICES)} (default: all)")
    up = sub.add_parser("up", help="start services and stay in the foreground until Ctrl-C")
    up.add_argument("services", nargs="*", metavar="SERVICE", help=f"any of {', '.join(SERVICES)} (default: all)")
    up.add_argument("--project", default=DEFAULT_PROJECT, help="Pub/Sub emulator project id")
    up.add_argument("--pubsub-port", type=int, default=8085)
    up.add_argument("--gcs-port", type=int, default=9023)
    up.add_argument("--kafka-port", type=int, default=9092)
    up.add_argument("--kafka-controller-port", type=int, default=9093)
    return parser


def _build(name: str, args: argparse.Namespace) -> Service:
    if name == "pubsub":
        return PubSubEmulator(port=args.pubsub_port, project=args.project)
    if name == "gcs":
        return StorageEmulator(port=args.gcs_port)
    return KafkaBroker(port=args.kafka_port, controller_port=args.kafka_controller_port)


def _up(args: argparse.Namespace) -> int:
    # The handler raises instead of setting a threading.Event: Event.set() from a signal handler can
    # deadlock with Event.wait() running in the same (main) thread.
    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started: list[Service] = []
    try:
        for name in args.services:
            service = _build(name, args)
            started.append(service)
            print(f"starting {name} ...", file=sys.stderr, flush=True)
            service.start()
            print(f"{name} ready in {service.startup_seconds:.1f} s (log: {service.log_path})",
                  file=sys.stderr, flush=True)
        for service in started:
            for key, value in service.env().items():
                print(f"export {key}={shlex.quote(value)}", flush=True)
        print("running; Ctrl-C stops everything", file=sys.stderr, flush=True)
        while True:
            dead = [s for s in started if not s.running]
            if dead:
                print(f"{dead[0].name} exited; its log is {dead[0].log_path}", file=sys.stderr)
                return 1
            time.sleep(1.0)  # paces the liveness check; a signal interrupts it through the handler
    except KeyboardInterrupt:
        return 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for service in reversed(started):
            begun = time.monotonic()
            service.cleanup()
            print(f"stopped {service.name} in {time.monotonic() - begun:.1f} s", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [s for s in args.services if s not in SERVICES]
    if unknown:
        parser.error(f"unknown service {unknown[0]!r}; choose from {', '.join(SERVICES)}")
    args.services = list(dict.fromkeys(args.services or SERVICES))  # keep order, drop repeats
    if args.command == "install":
        try:
            install(args.services)
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())

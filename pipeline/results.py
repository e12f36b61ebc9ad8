"""Follow the results and errors topics: print them readably, append JSON lines, or store them.

    python -m pipeline.results                       # print: request id, label, score (Ctrl-C stops)
    python -m pipeline.results --jsonl out.jsonl     # also append each message as one JSON line
    python -m pipeline.results --db                  # also upsert into sqlite:///results.db
    python -m pipeline.results --db postgresql+psycopg://user@host/db   # any SQLAlchemy URL

The broker is ``BROKER`` (or ``--broker``). On Pub/Sub the follower reads its own subscriptions,
``<topic>-<name>`` (created when missing; a new subscription only sees messages published after it
exists). On Kafka it reads the topics as consumer group ``fashion-results-<name>``.

Writes are idempotent, keyed by request id: a message delivered twice (at-least-once brokers) leaves
one row. A message is acknowledged only after every sink took it, so a database outage means
redelivery, not loss.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from common.messaging import BasicListener, Message, make_listener
from common.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_NAME = "follower"


@dataclass(frozen=True)
class Outcome:
    """One message from the results or errors topic, decoded."""

    kind: str  # "result" or "error"
    request_id: str | None
    payload: dict[str, Any] = field(repr=False)
    message_id: str = ""

    @property
    def predictions(self) -> list[dict[str, Any]]:
        preds = self.payload.get("predictions") or []
        return [p for p in preds if isinstance(p, dict)]

    @property
    def error(self) -> dict[str, Any]:
        err = self.payload.get("error")
        return err if isinstance(err, dict) else {}


def decode_outcome(message: Message, kind: str) -> Outcome:
    """Decode a results/errors message; a body that is not JSON becomes an error outcome, not a crash."""
    try:
        payload = message.json()
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        payload = {"error": {"code": "unreadable", "message": f"message {message.message_id}: {exc}"}}
        kind = "error"
    request_id = payload.get("request_id")
    return Outcome(kind=kind, request_id=request_id if isinstance(request_id, str) else None,
                   payload=payload, message_id=message.message_id)


def format_outcome(outcome: Outcome) -> str:
    """One readable line: ``r-42  Ankle boot 0.97 | Sneaker 0.88`` or ``r-43  ERROR code: message``."""
    rid = outcome.request_id or f"(no id, message {outcome.message_id})"
    if outcome.kind == "error":
        err = outcome.error
        where = f" [instance {err['index']}]" if "index" in err else ""
        return f"{rid}  ERROR {err.get('code', '?')}{where}: {err.get('message', '')}"
    shown = [f"{p.get('label', '?')} {float(p.get('score', 0.0)):.2f}" for p in outcome.predictions[:8]]
    more = len(outcome.predictions) - len(shown)
    tail = f" | ... {more} more" if more > 0 else ""
    latency = outcome.payload.get("latency_ms")
    timing = f"  ({latency:.1f} ms)" if isinstance(latency, int | float) else ""
    return f"{rid}  {' | '.join(shown)}{tail}{timing}"


# --- sinks ----------------------------------------------------------------------------------------


class Sink(Protocol):
    """Where outcomes go besides the terminal; ``write`` raising means the message is redelivered."""

    def write(self, outcome: Outcome) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends each outcome as one JSON line ``{"kind": ..., "received_at": ..., "message": {...}}``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[str] = self.path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, outcome: Outcome) -> None:
        line = json.dumps({"kind": outcome.kind, "received_at": now().isoformat(), "message": outcome.payload})
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def now() -> datetime:
    return datetime.now(UTC)


# --- following ------------------------------------------------------------------------------------


def follow_sources(settings: Settings, name: str = DEFAULT_NAME) -> dict[str, str]:
    """``{"result": source, "error": source}``; on Pub/Sub the subscriptions are created if missing."""
    topics = {"result": settings.results_topic, "error": settings.errors_topic}
    if settings.broker == "kafka":
        return topics
    from common.errors import BrokerUnavailable
    from common.messaging.pubsub.admin import ensure_subscription, ensure_topic

    sources = {}
    for kind, topic in topics.items():
        subscription = f"{topic}-{name}"
        try:
            ensure_subscription(settings.project_id, topic, subscription)
        except BrokerUnavailable:
            # A fresh emulator has no topics yet (in the cloud, Terraform made them): create it, try again.
            ensure_topic(settings.project_id, topic)
            ensure_subscription(settings.project_id, topic, subscription)
        sources[kind] = subscription
    return sources


class Follower:
    """Listens to the results and errors topics in two threads and hands each outcome to ``handle``.

    ``handle`` runs before the message is acknowledged; if it raises, the broker delivers again.
    """

    def __init__(self, settings: Settings, handle: Callable[[Outcome], None], *, name: str = DEFAULT_NAME,
                 **listener_options: Any) -> None:
        self.settings = settings
        self.handle = handle
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listeners: list[BasicListener] = []
        self.errors: list[BaseException] = []
        options = dict(listener_options)
        if settings.broker == "kafka":
            options.setdefault("group_id", f"fashion-results-{name}")
            options.setdefault("session_timeout_ms", 6000)
            options.setdefault("heartbeat_interval_ms", 1000)
        for kind, source in follow_sources(settings, name).items():
            listener = make_listener(settings, source, **options)
            self.listeners.append(listener)
            self._threads.append(threading.Thread(target=self._run, args=(listener, kind), daemon=True,
                                                  name=f"follow-{kind}"))

    def _run(self, listener: BasicListener, kind: str) -> None:
        try:
            listener.listen(lambda message: self.handle(decode_outcome(message, kind)), stop_event=self._stop)
        except BaseException as exc:  # reported by wait_ready / the caller; the thread must not die silently
            log.error("listener on %s stopped: %s", listener.source, exc)
            self.errors.append(exc)

    def start(self, ready_timeout: float = 60.0) -> Follower:
        """Start both listeners and wait until messages can flow (Kafka: partitions assigned)."""
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + ready_timeout
        for listener in self.listeners:
            while not listener.wait_ready(0.2):
                if self.errors:
                    raise self.errors[0]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"listener on {listener.source} not ready within {ready_timeout:.0f} s")
        return self

    def stop(self) -> None:
        self._stop.set()
        for listener in self.listeners:
            listener.stop()
        for thread in self._threads:
            thread.join(timeout=15)
        for listener in self.listeners:
            try:
                listener.close()
            except Exception:
                log.debug("closing %s failed", listener.source, exc_info=True)


# --- command line ---------------------------------------------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("pubsub", "kafka"), help="default: BROKER")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="follower name: Pub/Sub subscription suffix / Kafka group suffix (default %(default)s)")
    parser.add_argument("--jsonl", metavar="FILE", help="append every message to FILE as JSON lines")
    parser.add_argument("--db", metavar="URL", nargs="?", const="sqlite:///results.db",
                        help="upsert into a database keyed by request id (default URL sqlite:///results.db)")
    parser.add_argument("--quiet", action="store_true", help="do not print each message")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages (0 = never)")
    parser.add_argument("--timeout", type=float, default=0.0, help="stop after this many seconds (0 = never)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    settings = Settings.from_env(broker=args.broker)
    sinks: list[Sink] = []
    if args.jsonl:
        sinks.append(JsonlSink(args.jsonl))
    if args.db:
        from pipeline.results_db import DatabaseSink  # SQLAlchemy is needed only for --db

        sinks.append(DatabaseSink(args.db))
    seen = 0
    done = threading.Event()
    lock = threading.Lock()

    def handle(outcome: Outcome) -> None:
        nonlocal seen
        for sink in sinks:
            sink.write(outcome)
        with lock:
            seen += 1
            if not args.quiet:
                print(format_outcome(outcome), flush=True)
            if args.count and seen >= args.count:
                done.set()

    # SIGTERM stops like Ctrl-C. (Not Event.set() in the handler: it can deadlock with the wait below.)
    signal.signal(signal.SIGTERM, _interrupt)
    follower = Follower(settings, handle, name=args.name)
    try:
        follower.start()
        print(f"following {settings.results_topic} and {settings.errors_topic} on {settings.broker} "
              "(Ctrl-C to stop)", file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while not done.wait(0.2):
            if follower.errors:
                raise follower.errors[0]
            if deadline is not None and time.monotonic() > deadline:
                break
    except KeyboardInterrupt:
        pass
    finally:
        follower.stop()
        for sink in sinks:
            sink.close()
    print(f"{seen} message(s) received", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

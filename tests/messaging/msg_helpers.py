"""Helpers shared by the messaging tests: a per-broker kit of channels, publishers and listeners."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from common.messaging import BasicListener, BasicPublisher, Message, make_listener, make_publisher
from common.settings import Settings

WAIT_S = 30.0  # upper bound for anything a test waits on; the usual wait is well under a second


@dataclass
class Channel:
    """Where a test publishes (``topic``) and what its listeners read (``source``)."""

    topic: str
    source: str
    group_id: str | None = None


# Parameters of the ``broker`` fixture. PUBLISHERS adds the unbatched Pub/Sub publisher, for tests of
# publishing behaviour: use ``@publishers`` on them (listener tests need not run twice on Pub/Sub).
BROKERS = [pytest.param("pubsub", marks=pytest.mark.pubsub), pytest.param("kafka", marks=pytest.mark.kafka)]
PUBLISHERS = [*BROKERS, pytest.param("pubsub-unbatched", marks=pytest.mark.pubsub)]
publishers = pytest.mark.parametrize("broker", PUBLISHERS, indirect=True)

# Constructor options each ``broker`` parameter gives its publishers.
PUBLISHER_OPTIONS: dict[str, dict[str, Any]] = {"pubsub-unbatched": {"batching": False}}


@dataclass
class Kit:
    broker: str
    settings: Settings
    _cleanups: list[Callable[[], None]] = field(default_factory=list)
    #: Passed to every publisher this kit makes (``make_publisher(settings, **publisher_options)``).
    publisher_options: dict[str, Any] = field(default_factory=dict)

    def channel(self, partitions: int = 1, ordered: bool = False) -> Channel:
        """A new topic and its subscription (Pub/Sub) or consumer group (Kafka), unique per call."""
        name = f"msg-test-{uuid.uuid4().hex[:10]}"
        if self.broker == "pubsub":
            from common.messaging.pubsub import admin as ps_admin

            project = self.settings.project_id
            ps_admin.ensure_topic(project, name)
            ps_admin.ensure_subscription(project, name, f"{name}-sub", enable_message_ordering=ordered,
                                         ack_deadline_s=10)
            self._cleanups.append(lambda: ps_admin.delete_subscription(project, f"{name}-sub"))
            self._cleanups.append(lambda: ps_admin.delete_topic(project, name))
            return Channel(topic=name, source=f"{name}-sub")
        from common.messaging.kafka import admin as k_admin

        k_admin.ensure_topic(self.settings.kafka_bootstrap_servers, name, partitions)
        self._cleanups.append(lambda: k_admin.delete_topic(self.settings.kafka_bootstrap_servers, name))
        return Channel(topic=name, source=name, group_id=f"{name}-group")

    def publisher(self, **options: Any) -> BasicPublisher:
        publisher = make_publisher(self.settings, **{**self.publisher_options, **options})
        self._cleanups.append(publisher.close)
        return publisher

    def listener(self, channel: Channel, **options: Any) -> BasicListener:
        if self.broker == "kafka":
            # Short group timeouts so joins and rebalances take seconds, not the 45 s default.
            options.setdefault("group_id", channel.group_id)
            options.setdefault("session_timeout_ms", 6000)
            options.setdefault("heartbeat_interval_ms", 1000)
        listener = make_listener(self.settings, channel.source, **options)
        self._cleanups.append(listener.close)
        return listener

    def cleanup(self) -> None:
        for fn in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                fn()


@contextlib.contextmanager
def running(
    listener: BasicListener, callback: Callable[[Message], None] | None = None, *,
    listen: Callable[[], None] | None = None,
) -> Iterator[threading.Thread]:
    """Run ``listener.listen(callback)`` (or ``listen()``) on a thread until the block ends.

    Waits until the listener is ready before the block starts; fails if listen() does not return
    after stop(), and re-raises anything listen() raised.
    """
    errors: queue.Queue[BaseException] = queue.Queue()

    def target() -> None:
        try:
            if listen is not None:
                listen()
            else:
                assert callback is not None
                listener.listen(callback)
        except BaseException as exc:
            errors.put(exc)

    thread = threading.Thread(target=target, name=f"listen-{listener.source}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not listener.wait_ready(0.05) and thread.is_alive() and time.monotonic() < deadline:
            pass
        if not errors.empty():
            raise errors.get()
        assert listener.ready, "listener never became ready (subscription / partition assignment)"
        yield thread
    finally:
        listener.stop()
        thread.join(WAIT_S)
        assert not thread.is_alive(), "listen() did not return after stop()"
    if not errors.empty():
        raise errors.get()


def collect(q: queue.Queue[Message], n: int, timeout: float = WAIT_S) -> list[Message]:
    """Take ``n`` messages off ``q``, failing if they do not all arrive within ``timeout`` each."""
    out = []
    for i in range(n):
        try:
            out.append(q.get(timeout=timeout))
        except queue.Empty:
            pytest.fail(f"only {i} of {n} messages arrived within {timeout:.0f} s")
    return out


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)  # poll interval of a deadline-bounded condition check

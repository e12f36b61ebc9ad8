"""Pub/Sub publisher modes on the real emulator: the unbatched mode the predict function uses, and
how both modes fail when the emulator goes away under a publisher that was working."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from msg_helpers import collect, running

from common.errors import BrokerUnavailable, PublishError
from common.messaging import Message
from common.messaging.pubsub import admin
from common.messaging.pubsub.listener import PubSubListener
from common.messaging.pubsub.publisher import PubSubPublisher
from devservices import PubSubEmulator

pytestmark = pytest.mark.pubsub


@pytest.fixture
def ordered_channel(pubsub_emulator: Any) -> Iterator[tuple[str, str, str]]:
    """(project, topic, ordered subscription), deleted afterwards."""
    project, topic = pubsub_emulator.project, f"pub-{uuid.uuid4().hex[:10]}"
    admin.ensure_topic(project, topic)
    admin.ensure_subscription(project, topic, f"{topic}-sub", enable_message_ordering=True, ack_deadline_s=10)
    yield project, topic, f"{topic}-sub"
    admin.delete_subscription(project, f"{topic}-sub")
    admin.delete_topic(project, topic)


def test_unbatched_publish_has_reached_the_broker_when_it_returns(ordered_channel: tuple[str, str, str]) -> None:
    project, topic, subscription = ordered_channel
    with PubSubPublisher(project, batching=False) as publisher:
        future = publisher.publish(topic, {"request_id": "r-1", "n": 1}, {"request_id": "r-1"}, key="r-1")
        # Already finished: the caller's wait for the acknowledgement costs nothing more.
        assert future.done()
        message_id = future.result(timeout=0)
        second = publisher.publish_and_wait(topic, b"\x00\x01raw", {"content_type": "application/octet-stream"},
                                            key="r-1")

    received: queue.Queue[Message] = queue.Queue()
    with running(PubSubListener(project, subscription), received.put):
        first, other = collect(received, 2)
    assert first.message_id == message_id and other.message_id == second
    assert first.json() == {"request_id": "r-1", "n": 1}
    assert first.attributes == {"request_id": "r-1", "content_type": "application/json"}
    assert first.key == "r-1" and other.key == "r-1"
    assert other.data == b"\x00\x01raw"


@pytest.mark.parametrize("batching", [True, False], ids=["batching", "unbatched"])
def test_publishing_to_a_missing_topic_is_a_publish_error(pubsub_emulator: Any, batching: bool) -> None:
    with PubSubPublisher(pubsub_emulator.project, publish_timeout_s=5.0, batching=batching) as publisher:
        started = time.monotonic()
        with pytest.raises(PublishError) as info:
            publisher.publish_and_wait(f"missing-{uuid.uuid4().hex[:8]}", {"x": 1}, key="k")
        # NotFound is not retried: the caller learns at once that the topic is wrong.
        assert time.monotonic() - started < 3.0
    assert info.value.code == "publish_rejected"


def test_emulator_gone_under_working_publishers_fails_them_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An emulator of its own: this test freezes and then kills it, which the session's must not suffer.
    timeout_s = 2.0
    with PubSubEmulator() as emulator:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
        admin.ensure_topic(emulator.project, "outage-topic")
        publishers = {batching: PubSubPublisher(emulator.project, publish_timeout_s=timeout_s, batching=batching)
                      for batching in (True, False)}
        assert emulator.proc is not None and emulator.proc.pid is not None
        group = emulator.proc.pid  # the emulator runs in a process group of its own
        try:
            for publisher in publishers.values():  # both work and hold an open channel
                assert publisher.publish_and_wait("outage-topic", {"before": True}, key="k")
            # Frozen: connections stay open and nothing answers (an unbatched publish blocks its caller,
            # so this is the case that could hang). Then killed: connections are refused.
            for phase in ("frozen", "killed"):
                if phase == "frozen":
                    os.killpg(group, signal.SIGSTOP)
                else:
                    emulator.stop(graceful=False)
                for batching, publisher in publishers.items():
                    started = time.monotonic()
                    with pytest.raises(BrokerUnavailable):
                        publisher.publish_and_wait("outage-topic", {"during": phase}, key="k")
                    elapsed = time.monotonic() - started
                    # The RPC deadline, or the base class's watchdog at timeout + 1 s (publish_and_wait
                    # itself gives up at timeout + 2 s, once publish() has returned: a blocked one never would).
                    assert elapsed < timeout_s + 2.5, f"{phase}, batching={batching}: {elapsed:.1f} s"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGCONT)  # lets a graceful stop work if an assertion failed
            for publisher in publishers.values():
                publisher.close(timeout=timeout_s)

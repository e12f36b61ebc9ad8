"""What callers of the messaging API rely on, checked on both brokers with the same test bodies."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time

import pytest
from msg_helpers import WAIT_S, Kit, collect, publishers, running

from common.errors import BrokerUnavailable, ConfigurationError, PublishError
from common.messaging import Message, SharedPublisher, make_listener, make_publisher
from common.settings import Settings


@publishers
def test_json_round_trip_keeps_payload_and_attributes(broker: Kit) -> None:
    channel = broker.channel()
    publisher = broker.publisher()
    payload = {"request_id": "r-1", "model": "fashion-cnn", "instances": [[0, 255, 3]], "note": "naïve ✓"}
    message_id = publisher.publish_and_wait(channel.topic, payload, {"request_id": "r-1", "trace": "t-9"})
    assert message_id

    received: queue.Queue[Message] = queue.Queue()
    with running(broker.listener(channel), received.put):
        (message,) = collect(received, 1)
    assert message.json() == payload
    # Compact JSON: no spaces after separators, UTF-8 rather than \\u escapes.
    assert message.data == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert message.attributes == {"request_id": "r-1", "trace": "t-9", "content_type": "application/json"}
    assert message.content_type == "application/json"
    assert message.message_id


@publishers
def test_binary_round_trip_is_byte_exact(broker: Kit) -> None:
    channel = broker.channel()
    publisher = broker.publisher()
    pixels = bytes(range(256)) * 3 + bytes(16)  # 784 bytes, every byte value
    attributes = {"content_type": "application/x-fashion-pixels", "shape": "1,28,28", "request_id": "r-2"}
    publisher.publish_and_wait(channel.topic, pixels, attributes)

    received: queue.Queue[Message] = queue.Queue()
    with running(broker.listener(channel), received.put):
        (message,) = collect(received, 1)
    assert message.data == pixels
    assert message.attributes == attributes


@publishers
def test_messages_with_one_key_arrive_in_publish_order(broker: Kit) -> None:
    # Kafka: one key -> one partition of three; Pub/Sub: one ordering key on an ordered subscription.
    channel = broker.channel(partitions=3, ordered=True)
    publisher = broker.publisher()
    futures = [publisher.publish(channel.topic, {"seq": i}, key="customer-7") for i in range(60)]
    for f in futures:
        f.result(timeout=WAIT_S)

    received: queue.Queue[Message] = queue.Queue()
    with running(broker.listener(channel), received.put):
        messages = collect(received, 60)
    assert [m.json()["seq"] for m in messages] == list(range(60))
    assert {m.key for m in messages} == {"customer-7"}


def test_failed_callback_gets_the_message_again_and_nothing_is_lost(broker: Kit) -> None:
    channel = broker.channel()
    publisher = broker.publisher()
    for i in range(20):
        publisher.publish(channel.topic, {"seq": i})
    publisher.flush()

    failed_once = threading.Event()
    attempts: list[int] = []
    succeeded: queue.Queue[Message] = queue.Queue()

    def callback(message: Message) -> None:
        if message.json()["seq"] == 7:
            attempts.append(1)
            if not failed_once.is_set():
                failed_once.set()
                raise RuntimeError("transient failure on the first delivery")
        succeeded.put(message)

    pubsub = broker.broker == "pubsub"
    # Pub/Sub: the client gives up its lease on a message it never acknowledged after 2 s, and the
    # emulator then delivers it again when the 10 s ack deadline has passed.
    listener = broker.listener(channel, **({"max_lease_duration_s": 2.0} if pubsub else {}))
    with running(listener, callback):
        messages = collect(succeeded, 20)
        # Pub/Sub is checked on the same listener: wait past lease + ack deadline for any message
        # that was not acknowledged. (A second streaming listener is no good here: the emulator keeps
        # handing new messages to the stream just closed for 10-40 s.)
        extra = _next_within(succeeded, 14.0) if pubsub else None
    assert sorted(m.json()["seq"] for m in messages) == list(range(20))
    assert len(attempts) == 2, "seq 7 should be delivered exactly twice: once failing, once succeeding"
    assert extra is None, f"acknowledged message delivered again: {extra}"

    if broker.broker == "kafka":
        # Everything was committed: a new member of the group starts after the last record, which
        # the sentinel (same single partition, so strictly after) proves.
        publisher.publish_and_wait(channel.topic, {"seq": "sentinel"})
        later: queue.Queue[Message] = queue.Queue()
        with running(broker.listener(channel), later.put):
            first = collect(later, 1)[0]
        assert first.json() == {"seq": "sentinel"}


def _next_within(q: queue.Queue[Message], seconds: float) -> Message | None:
    """The next message if one arrives within ``seconds`` (a bounded wait for absence)."""
    try:
        return q.get(timeout=seconds)
    except queue.Empty:
        return None


@publishers
def test_payload_that_is_not_json_is_refused_before_sending(broker: Kit) -> None:
    channel = broker.channel()
    publisher = broker.publisher()
    for bad in ({"x": object()}, {"x": float("nan")}, {"x": float("inf")}, {"x": {1, 2}}, ["not", "a", "dict"]):
        with pytest.raises(PublishError) as info:
            publisher.publish(channel.topic, bad)  # type: ignore[arg-type]
        assert info.value.code == "publish_rejected"
    with pytest.raises(PublishError):
        publisher.publish(channel.topic, {"ok": 1}, {"count": 3})  # type: ignore[dict-item]


@publishers
def test_payload_over_the_broker_limit_is_refused(broker: Kit) -> None:
    channel = broker.channel()
    publisher = broker.publisher()
    limit = publisher.max_message_bytes
    assert limit == (1024 * 1024 if broker.broker == "kafka" else 10_000_000 - 4096)
    with pytest.raises(PublishError) as info:
        publisher.publish(channel.topic, bytes(limit + 1))
    assert info.value.code == "payload_too_large"
    with pytest.raises(PublishError) as info:
        publisher.publish(channel.topic, {"blob": "x" * limit})
    assert info.value.code == "payload_too_large"
    # Just under the Kafka limit (framing included) still goes through; 1 MB is well inside Pub/Sub's.
    near = limit - 200 if broker.broker == "kafka" else 1024 * 1024
    assert publisher.publish_and_wait(channel.topic, bytes(near))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@publishers
@pytest.mark.parametrize("key", [None, "ordered"])
def test_unreachable_broker_fails_in_bounded_time(broker: Kit, key: str | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    if broker.broker == "pubsub":
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
        settings = Settings.from_env({}, broker="pubsub", project_id=broker.settings.project_id,
                                     publish_timeout_s=2.0)
    else:
        settings = Settings.from_env({}, broker="kafka", kafka_bootstrap_servers=f"127.0.0.1:{port}",
                                     publish_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        # Kafka refuses in the constructor (it bootstraps); Pub/Sub fails the publish future.
        publisher = make_publisher(settings, **broker.publisher_options)
        try:
            publisher.publish(channel_name(), {"x": 1}, key=key).result(timeout=WAIT_S)
        finally:
            publisher.close(timeout=2.0)
    elapsed = time.monotonic() - started
    assert elapsed < 8.0, f"took {elapsed:.1f} s to report an unreachable broker"


def test_unreachable_broker_fails_a_listener_in_bounded_time(broker: Kit,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        if broker.broker == "pubsub":
            monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
            listener = make_listener(broker.settings, "some-subscription", startup_timeout_s=2.0)
            listener.listen(lambda m: None)
        else:
            settings = Settings.from_env({}, broker="kafka", kafka_bootstrap_servers=f"127.0.0.1:{port}")
            make_listener(settings, "some-topic", group_id="g", startup_timeout_s=2.0)
    assert time.monotonic() - started < 8.0


@publishers
def test_close_flushes_pending_publishes(broker: Kit) -> None:
    channel = broker.channel()
    publisher = broker.publisher()
    futures = [publisher.publish(channel.topic, {"seq": i}) for i in range(300)]
    publisher.close()
    # Every future is finished the moment close() returns, and none failed.
    assert all(f.done() for f in futures)
    assert all(f.exception() is None for f in futures)
    with pytest.raises(PublishError):
        publisher.publish(channel.topic, {"seq": "after close"})

    received: queue.Queue[Message] = queue.Queue()
    with running(broker.listener(channel), received.put):
        messages = collect(received, 300)
    assert sorted(m.json()["seq"] for m in messages) == list(range(300))


def test_unbatched_shared_publisher_delivers_each_message(broker: Kit) -> None:
    # What the predict function uses: one outcome per invocation, sent at once and awaited.
    channel = broker.channel()
    shared = SharedPublisher(broker.settings, batching=False)
    publisher = shared.get()
    try:
        future = publisher.publish(channel.topic, {"request_id": "r-5"}, {"request_id": "r-5"}, key="r-5")
        if broker.broker == "pubsub":
            # The broker has the message by the time publish() returns: nothing waits in a batch.
            assert future.done()
        assert future.result(timeout=WAIT_S)
    finally:
        publisher.close()
    received: queue.Queue[Message] = queue.Queue()
    with running(broker.listener(channel), received.put):
        (message,) = collect(received, 1)
    assert message.json() == {"request_id": "r-5"}
    assert message.attributes["request_id"] == "r-5" and message.key == "r-5"


def test_stop_event_ends_listen(broker: Kit) -> None:
    channel = broker.channel()
    listener = broker.listener(channel)
    stop = threading.Event()
    thread = threading.Thread(target=listener.listen, args=(lambda m: None,), kwargs={"stop_event": stop})
    thread.start()
    assert listener.wait_ready(WAIT_S)
    stop.set()
    thread.join(WAIT_S)
    assert not thread.is_alive()


@pytest.mark.pubsub
def test_missing_subscription_is_a_configuration_error(pubsub_emulator: object) -> None:
    settings = Settings.from_env({}, broker="pubsub", project_id=pubsub_emulator.project)  # type: ignore[attr-defined]
    listener = make_listener(settings, channel_name())
    try:
        with pytest.raises(ConfigurationError):
            listener.listen(lambda m: None)
    finally:
        listener.close()


def channel_name() -> str:
    import uuid

    return f"msg-test-missing-{uuid.uuid4().hex[:8]}"

"""A Kafka broker that goes away and comes back: publishes fail in bounded time, then both sides recover."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest
from msg_helpers import WAIT_S, Kit, collect, running

from common.errors import BrokerUnavailable
from common.messaging import Message


@pytest.mark.slow
def test_publisher_and_listener_survive_a_broker_restart(kafka_broker: Any, kafka_kit: Kit) -> None:
    if not kafka_broker.restartable:
        pytest.skip("the broker was started elsewhere (DEVSERVICES_REUSE); not restarting it")
    channel = kafka_kit.channel(partitions=1)
    publisher = kafka_kit.publisher(publish_timeout_s=3.0)
    publisher.publish_and_wait(channel.topic, {"seq": 0})
    received: queue.Queue[Message] = queue.Queue()

    with running(kafka_kit.listener(channel), received.put):
        assert collect(received, 1)[0].json() == {"seq": 0}
        kafka_broker.stop()
        try:
            started = time.monotonic()
            future = publisher.publish(channel.topic, {"seq": "while down"})
            with pytest.raises(BrokerUnavailable):
                future.result(timeout=WAIT_S)
            elapsed = time.monotonic() - started
            assert elapsed < 3.0 + 3.0, f"a publish to a stopped broker took {elapsed:.1f} s to fail"
        finally:
            kafka_broker.start()
        # The same publisher and the same group member carry on once the broker is back.
        publisher.publish_and_wait(channel.topic, {"seq": 1}, timeout=WAIT_S)
        messages = collect(received, 1, timeout=60.0)
    assert [m.json() for m in messages] == [{"seq": 1}]

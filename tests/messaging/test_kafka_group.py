"""Consumer-group behaviour only Kafka has: partitions moving between members, committed offsets
surviving a restart, and the micro-batching loop the predict adapter runs."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import pytest
from msg_helpers import WAIT_S, Kit, collect, running, wait_until

from common.messaging import Message
from common.messaging.kafka.listener import KafkaListener

pytestmark = pytest.mark.kafka


def _publish_seq(kit: Kit, topic: str, n: int, key_prefix: str | None = None) -> None:
    publisher = kit.publisher()
    futures = [publisher.publish(topic, {"seq": i}, key=f"{key_prefix}{i}" if key_prefix else None)
               for i in range(n)]
    for f in futures:
        f.result(timeout=WAIT_S)


def test_second_consumer_in_the_group_takes_over_partitions(kafka_kit: Kit) -> None:
    channel = kafka_kit.channel(partitions=2)
    first = kafka_kit.listener(channel)
    second = kafka_kit.listener(channel)
    assert isinstance(first, KafkaListener) and isinstance(second, KafkaListener)
    received: queue.Queue[tuple[str, Message]] = queue.Queue()

    with running(first, lambda m: received.put(("first", m))):
        wait_until(lambda: len(first.assignment()) == 2, "the only member to own both partitions")
        with running(second, lambda m: received.put(("second", m))):
            wait_until(lambda: len(first.assignment()) == 1 and len(second.assignment()) == 1,
                       "the group to split the two partitions between the two members")
            assert first.assignment().isdisjoint(second.assignment())
            owned = {"first": {tp.partition for tp in first.assignment()},
                     "second": {tp.partition for tp in second.assignment()}}
            _publish_seq(kafka_kit, channel.topic, 40, key_prefix="k")
            got = [received.get(timeout=WAIT_S) for _ in range(40)]

    by_member: dict[str, set[int]] = {"first": set(), "second": set()}
    for who, message in got:
        by_member[who].add(message.raw.partition)
    # Each member read exactly the partition the group gave it (40 keys spread over both partitions).
    assert by_member == owned
    assert sorted(m.json()["seq"] for _, m in got) == list(range(40))
    assert received.empty()


def test_restarted_consumer_resumes_from_committed_offsets(kafka_kit: Kit) -> None:
    channel = kafka_kit.channel(partitions=1)
    _publish_seq(kafka_kit, channel.topic, 10)

    handled: list[int] = []
    reached_5 = threading.Event()

    def crashes_at_5(message: Message) -> None:
        seq = message.json()["seq"]
        if seq == 5:
            reached_5.set()
            raise RuntimeError("the process dies while handling seq 5")
        handled.append(seq)

    with running(kafka_kit.listener(channel), crashes_at_5):
        assert reached_5.wait(WAIT_S)
    assert handled == [0, 1, 2, 3, 4]

    # A new consumer in the same group starts at the first record not handled: 0-4 were committed and
    # are not delivered again; 5-9 were not and are not lost.
    received: queue.Queue[Message] = queue.Queue()
    with running(kafka_kit.listener(channel), received.put):
        messages = collect(received, 5)
    assert [m.json()["seq"] for m in messages] == [5, 6, 7, 8, 9]


def test_listen_batch_commits_after_the_callback_and_redelivers_a_failed_batch(kafka_kit: Kit) -> None:
    channel = kafka_kit.channel(partitions=1)
    _publish_seq(kafka_kit, channel.topic, 25)
    listener = kafka_kit.listener(channel)
    assert isinstance(listener, KafkaListener)

    batches: queue.Queue[tuple[str, list[Message]]] = queue.Queue()
    failed = threading.Event()

    def callback(messages: list[Message]) -> None:
        if not failed.is_set():
            failed.set()
            batches.put(("failed", messages))
            raise RuntimeError("results could not be produced")
        batches.put(("ok", messages))

    ok: list[list[Message]] = []
    with running(listener, listen=lambda: listener.listen_batch(callback, max_records=10, max_wait_ms=200)):
        status, failed_batch = batches.get(timeout=WAIT_S)
        assert status == "failed"
        while sum(len(b) for b in ok) < 25:
            status, batch = batches.get(timeout=WAIT_S)
            assert status == "ok"
            ok.append(batch)

    assert all(1 <= len(b) <= 10 for b in ok)
    seqs = [m.json()["seq"] for b in ok for m in b]
    assert seqs == list(range(25)), "every record exactly once, in partition order"
    # The failed batch came back: same records, second delivery.
    assert [m.message_id for m in ok[0][: len(failed_batch)]] == [m.message_id for m in failed_batch]
    assert {m.delivery_attempt for m in ok[0][: len(failed_batch)]} == {2}

    # Offsets were committed after each successful batch: a new member gets only what comes next.
    kafka_kit.publisher().publish_and_wait(channel.topic, {"seq": "next"})
    again = kafka_kit.listener(channel)
    assert isinstance(again, KafkaListener)
    later: queue.Queue[list[Message]] = queue.Queue()
    with running(again, listen=lambda: again.listen_batch(later.put, max_records=10, max_wait_ms=50)):
        first = later.get(timeout=WAIT_S)
    assert [m.json()["seq"] for m in first] == ["next"]


def _committed(bootstrap: str, group: str) -> int:
    """The group's committed offset on partition 0 (0 when nothing was committed yet)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return max((meta.offset for meta in offsets.values()), default=0)
    finally:
        admin.close()


def test_pipelined_batches_commit_in_order_and_a_failure_redelivers_all_in_flight(kafka_kit: Kit) -> None:
    # The adapter's form: the callback starts a batch and returns a future; the next batch is gathered
    # and started before the first one finished.
    channel = kafka_kit.channel(partitions=1)
    assert channel.group_id is not None
    bootstrap = kafka_kit.settings.kafka_bootstrap_servers
    _publish_seq(kafka_kit, channel.topic, 30)
    listener = kafka_kit.listener(channel)
    assert isinstance(listener, KafkaListener)
    started: queue.Queue[tuple[list[Message], Future[None]]] = queue.Queue()

    def callback(messages: list[Message]) -> Future[None]:
        done: Future[None] = Future()
        started.put((messages, done))
        return done

    answered: list[Message] = []
    with running(listener, listen=lambda: listener.listen_batch(callback, max_records=10, max_wait_ms=50,
                                                                max_in_flight=2)):
        first, first_done = started.get(timeout=WAIT_S)
        second, second_done = started.get(timeout=WAIT_S)  # started while the first is unfinished
        second_done.set_result(None)  # the later batch finishing first must not commit anything
        assert _committed(bootstrap, channel.group_id) == 0
        first_done.set_exception(RuntimeError("results could not be produced"))
        while len({m.json()["seq"] for m in answered}) < 30:
            batch, done = started.get(timeout=WAIT_S)
            answered.extend(batch)
            done.set_result(None)
        wait_until(lambda: _committed(bootstrap, channel.group_id) == 30, "every batch committed")

    # Both batches in flight at the failure came back, from the first one's first record, in order.
    assert [m.json()["seq"] for m in answered] == list(range(30))
    assert [m.message_id for m in answered[: len(first) + len(second)]] == [m.message_id for m in first + second]
    assert {m.delivery_attempt for m in answered[: len(first) + len(second)]} == {2}

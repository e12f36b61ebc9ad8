"""Kafka listener: a consumer-group member that commits offsets only after the callback returned.

Auto-commit is off. After a callback raises, the consumer seeks back to the failed record and commits
nothing past it, so that record (and everything after it in its partition) is delivered again, in
order. ``listen_batch`` is the micro-batching form the predict adapter uses: one callback per batch
of at most ``max_records`` records gathered for at most ``max_wait_ms``, one commit after it. With
``max_in_flight`` > 1 the next batch is gathered and started while earlier ones finish (the adapter
prepares batch k+1 while the model runs on batch k); offsets are still committed in batch order,
each only after its batch and every earlier one finished.

A batch callback must finish within ``max_poll_interval_ms`` (default 5 minutes), or the group
considers this member dead and gives its partitions to another; batches are bounded by
``max_records`` for that reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka import errors as kerr
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from common.errors import BrokerUnavailable, ConfigurationError
from common.messaging.base import BasicListener, Message, MessageCallback

log = logging.getLogger(__name__)

# A batch callback either finishes the batch before returning (None), or starts it and returns a
# future that resolves once the batch is done (its outputs acknowledged): see ``listen_batch``.
BatchCallback = Callable[[list[Message]], "Future[Any] | None"]


def to_message(record: Any, delivery_attempt: int) -> Message:
    """The broker-independent view of a ``ConsumerRecord``."""
    return Message(
        data=bytes(record.value) if record.value is not None else b"",
        attributes={k: v.decode("utf-8", errors="replace") for k, v in (record.headers or [])},
        key=record.key.decode("utf-8", errors="replace") if record.key is not None else None,
        message_id=f"{record.topic}:{record.partition}:{record.offset}",
        delivery_attempt=delivery_attempt,
        raw=record,
    )


@dataclass(frozen=True)
class _InFlight:
    """A batch handed to the callback, and the future that resolves when it is finished."""

    batch: list[tuple[TopicPartition, Any]]
    done: Future[Any]


class _Rebalance(ConsumerRebalanceListener):
    """Keeps the listener's view of its partitions current (called inside ``poll()``)."""

    def __init__(self, listener: KafkaListener) -> None:
        self._listener = listener

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._listener._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._listener._on_assigned(set(assigned))


class KafkaListener(BasicListener):
    """Consumes one topic as a member of ``group_id``; at-least-once, in order within a partition."""

    broker = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        group_id: str,
        auto_offset_reset: str = "earliest",
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        max_poll_interval_ms: int = 300_000,
        max_poll_records: int = 500,
        poll_timeout_ms: int = 200,
        retry_backoff_s: float = 0.2,
        max_retry_backoff_s: float = 5.0,
        startup_timeout_s: float = 30.0,
        commit_timeout_ms: int = 10_000,
        **consumer_options: Any,
    ) -> None:
        super().__init__(topic)
        self.topic = topic
        self.group_id = group_id
        self.poll_timeout_ms = poll_timeout_ms
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.startup_timeout_s = startup_timeout_s
        self.commit_timeout_ms = commit_timeout_ms
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": auto_offset_reset,
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "max_poll_interval_ms": max_poll_interval_ms,
            "max_poll_records": max_poll_records,
            "bootstrap_timeout_ms": int(startup_timeout_s * 1000),
            "reconnect_backoff_max_ms": 1000,
            # A missing topic is a configuration error here, not something to create by reading it.
            "allow_auto_create_topics": False,
        }
        config.update(consumer_options)
        try:
            self._consumer = KafkaConsumer(**config)
        except kerr.KafkaError as exc:
            raise BrokerUnavailable(f"Kafka at {bootstrap_servers} did not answer: {exc}") from exc
        self._lock = threading.Lock()
        self._assigned: set[TopicPartition] = set()
        self._attempts: dict[tuple[TopicPartition, int], int] = {}
        self._failures = 0
        self._subscribed = False
        self._finished: dict[TopicPartition, int] = {}  # next offset to commit per partition, re-sent each time

    # -- public ----------------------------------------------------------------------------------

    def assignment(self) -> set[TopicPartition]:
        """Partitions this member owns now (a copy; updated at each rebalance)."""
        with self._lock:
            return set(self._assigned)

    def listen_batch(
        self,
        callback: BatchCallback,
        max_records: int = 256,
        max_wait_ms: int = 50,
        *,
        stop_event: threading.Event | None = None,
        max_in_flight: int = 1,
    ) -> None:
        """Call ``callback`` with up to ``max_records`` messages gathered for up to ``max_wait_ms``.

        The callback either finishes the batch before returning, or returns a future that resolves
        when the batch is finished (it must wait for its own produce acknowledgements first); at most
        ``max_in_flight`` batches are unfinished at a time. A batch's offsets are committed only once
        it and every earlier batch finished. If a batch fails (the callback or its future raises),
        the batches still in flight are waited for, every partition is rewound to its first record
        among them, and they are delivered again.
        """
        if max_records < 1 or max_wait_ms < 0 or max_in_flight < 1:
            raise ValueError("max_records and max_in_flight must be >= 1 and max_wait_ms >= 0")
        self._ready.clear()
        should_stop = self._should_stop(stop_event)
        in_flight: deque[_InFlight] = deque()
        try:
            self._subscribe()
            while not should_stop():
                batch = self._gather(max_records, max_wait_ms, should_stop)
                if batch:
                    in_flight.append(self._start_batch(callback, batch))
                # Settle what is done; wait for the oldest when the pipeline is full, or when idle.
                while in_flight and (in_flight[0].done.done() or len(in_flight) >= max_in_flight or not batch):
                    if not self._settle(in_flight):
                        break
            while in_flight:  # stopping: finish and commit what was started
                self._settle(in_flight)
            self._commit(self._finished)  # and wait for that last commit
        finally:
            # A stop() that came before or during this call ends it; the next listen() starts afresh.
            self._stop.clear()
            self._ready.clear()
            self._unsubscribe()

    def _start_batch(self, callback: BatchCallback, batch: list[tuple[TopicPartition, Any]]) -> _InFlight:
        messages = [to_message(r, self._attempt(tp, r.offset)) for tp, r in batch]
        try:
            done = callback(messages)
        except Exception as exc:
            done = Future()
            done.set_exception(exc)
        if done is None:
            done = Future()
            done.set_result(None)
        return _InFlight(batch, done)

    def _settle(self, in_flight: deque[_InFlight]) -> bool:
        """Wait for the oldest batch and commit it, or rewind everything in flight; False on failure."""
        head = in_flight.popleft()
        failure = head.done.exception()  # waits; bounded by the callback's own publish timeouts
        if failure is None:
            done: dict[TopicPartition, int] = {}
            for tp, r in head.batch:
                self._attempts.pop((tp, r.offset), None)
                done[tp] = max(done.get(tp, 0), r.offset + 1)
            self._commit_async(done)
            self._backoff(False)
            return True
        failed = [head, *in_flight]
        in_flight.clear()
        for later in failed[1:]:  # their outputs may reach the broker: duplicates, never losses
            later.done.exception()
        records = sum(len(f.batch) for f in failed)
        log.warning("batch callback failed for %d records; they will be delivered again", records,
                    exc_info=(type(failure), failure, failure.__traceback__))
        first: dict[TopicPartition, int] = {}
        for f in failed:
            for tp, r in f.batch:
                first[tp] = min(first.get(tp, r.offset), r.offset)
        owned = self.assignment()  # a partition revoked meanwhile is re-read by its new owner
        for tp, offset in first.items():
            if tp in owned:
                self._consumer.seek(tp, offset)
        self._backoff(True)
        return False

    # -- single-message loop ---------------------------------------------------------------------

    def _listen(self, callback: MessageCallback, should_stop: Callable[[], bool]) -> None:
        self._subscribe()
        try:
            self._listen_loop(callback, should_stop)
        finally:
            self._unsubscribe()

    def _listen_loop(self, callback: MessageCallback, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            polled = self._poll(self.poll_timeout_ms, None)
            done: dict[TopicPartition, int] = {}
            failed = False
            for tp, records in polled.items():
                for record in records:
                    if should_stop() or failed:
                        # Not handed to the callback: rewind so a later listen() sees it again.
                        self._consumer.seek(tp, record.offset)
                        break
                    try:
                        callback(to_message(record, self._attempt(tp, record.offset)))
                    except Exception:
                        log.warning("callback failed for %s:%s:%s; it will be delivered again",
                                    tp.topic, tp.partition, record.offset, exc_info=True)
                        self._consumer.seek(tp, record.offset)
                        failed = True
                        break
                    self._attempts.pop((tp, record.offset), None)
                    done[tp] = record.offset + 1
            self._commit(done)
            self._backoff(failed)

    # -- batch loop ------------------------------------------------------------------------------

    def _gather(
        self, max_records: int, max_wait_ms: int, should_stop: Callable[[], bool]
    ) -> list[tuple[TopicPartition, Any]]:
        batch: list[tuple[TopicPartition, Any]] = []
        deadline: float | None = None
        while len(batch) < max_records and not should_stop():
            if deadline is None:
                timeout_ms = self.poll_timeout_ms
            else:
                timeout_ms = int((deadline - time.monotonic()) * 1000)
                if timeout_ms <= 0:
                    break
            polled = self._poll(timeout_ms, max_records - len(batch))
            for tp, records in polled.items():
                batch.extend((tp, r) for r in records)
            if batch and deadline is None:
                deadline = time.monotonic() + max_wait_ms / 1000
            if not batch and deadline is None:
                return batch  # idle: let the caller check should_stop
            # A rebalance inside poll() may have taken partitions away: their records now belong to
            # another member, which will get them from the last committed offset.
            owned = self.assignment()
            batch = [(tp, r) for tp, r in batch if tp in owned]
        return batch

    # -- shared ----------------------------------------------------------------------------------

    def _subscribe(self) -> None:
        if self._subscribed:
            return
        self._consumer.subscribe([self.topic], listener=_Rebalance(self))
        self._subscribed = True
        # Join only once the topic's partitions are known, and learn them after subscribe(): the
        # group coordinator compares the partitions seen at the last metadata update with those it
        # assigned, so a join before that update either assigns nothing (a just-created topic) or is
        # followed at once by a second rebalance. Either delays the start; a rebalance that meets a
        # broker outage can also leave kafka-python stuck outside the group.
        deadline = time.monotonic() + self.startup_timeout_s
        while self.topic not in self._consumer.topics():
            if time.monotonic() > deadline:
                self._unsubscribe()
                raise ConfigurationError(f"Kafka topic {self.topic!r} does not exist (create it first)")
            self._stop.wait(0.1)

    def _unsubscribe(self) -> None:
        """Leave the group when listening ends, so its partitions move to other members at once
        instead of waiting for this idle member to time out."""
        if not self._subscribed:
            return
        self._subscribed = False
        try:
            self._consumer.unsubscribe()
        except kerr.KafkaError:
            log.warning("leaving consumer group %s failed", self.group_id, exc_info=True)
        with self._lock:
            self._assigned = set()
        self._attempts.clear()
        self._finished.clear()  # a later listen() must not re-send positions others may have passed

    def _poll(self, timeout_ms: int, max_records: int | None) -> dict[TopicPartition, list[Any]]:
        polled: dict[TopicPartition, list[Any]] = self._consumer.poll(
            timeout_ms=timeout_ms, max_records=max_records
        )
        rescue_orphaned_join(self._consumer)
        return polled

    def _attempt(self, tp: TopicPartition, offset: int) -> int:
        """Count deliveries of one record by this member (Kafka itself keeps no such counter)."""
        n = self._attempts.get((tp, offset), 0) + 1
        self._attempts[(tp, offset)] = n
        return n

    def _commit(self, done: dict[TopicPartition, int]) -> None:
        owned = self.assignment()
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in done.items() if tp in owned}
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=self.commit_timeout_ms)
        except kerr.CommitFailedError:
            # The group rebalanced under us; the new owner re-reads from the last committed
            # offset, so these records are delivered again (at-least-once), never lost.
            log.warning("commit of %s failed after a rebalance; records will be redelivered", offsets)
        except kerr.KafkaError as exc:
            # Broker or coordinator away: the next successful commit covers these offsets too (commits
            # are positions, not acks); a restart before then delivers them again. Bounded, so stop()
            # still ends listen() during an outage.
            log.warning("commit of %s failed (%s); it is retried with the next one", offsets, exc)

    def _commit_async(self, done: dict[TopicPartition, int]) -> None:
        """Commit without waiting for the coordinator, so the next batch is not held up by a round trip.

        Safe for at-least-once: commits are positions sent in order, a lost one is covered by the
        next, and ``listen_batch`` ends with a synchronous commit of everything finished.
        """
        self._finished.update(done)
        owned = self.assignment()
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._finished.items() if tp in owned}
        if not offsets:
            return

        def committed(sent: dict[TopicPartition, OffsetAndMetadata], result: Any) -> None:
            if isinstance(result, Exception):
                log.warning("asynchronous commit of %s failed (%s); the next commit covers it", sent, result)

        try:
            self._consumer.commit_async(offsets, callback=committed)
        except kerr.KafkaError as exc:
            log.warning("asynchronous commit of %s failed (%s); the next commit covers it", offsets, exc)

    def _backoff(self, failed: bool) -> None:
        """Wait a little longer after each consecutive callback failure, reset on success."""
        if not failed:
            self._failures = 0
            return
        self._failures += 1
        delay = min(self.retry_backoff_s * 2 ** (self._failures - 1), self.max_retry_backoff_s)
        self._stop.wait(delay)

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        with self._lock:
            # Union: eager assignors revoke everything first; cooperative ones pass only the delta.
            self._assigned |= assigned
            owned = set(self._assigned)
        # Delivery counts survive a rebalance that hands a partition straight back to this member.
        self._attempts = {k: v for k, v in self._attempts.items() if k[0] in owned}
        self._ready.set()

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        with self._lock:
            self._assigned -= revoked
        for tp in revoked:  # its new owner commits from now on; ours would move it back
            self._finished.pop(tp, None)

    def _close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except kerr.KafkaError:
            log.debug("KafkaConsumer.close failed", exc_info=True)


def rescue_orphaned_join(consumer: Any) -> bool:
    """Finish a group join that kafka-python 3.0.12 would otherwise drop; True if one was rescued.

    Seen here and reproduced on a real broker: when a rebalance is started by a metadata change
    (the consumer joined before it knew the topic's partitions, or partitions were added) and
    ``poll()`` times out while the JoinGroup/SyncGroup task is in flight, the task completes in
    the background, nothing reports it (``need_rejoin()`` is already False), so the assignment is
    never applied and heartbeats stay off: the member is evicted and never fetches again. The
    micro-batch loop polls with short timeouts, so it hits this. Marking the member as needing a
    rejoin makes the next ``poll()`` run a fresh join that completes normally.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_join_task", None)
    if coordinator is None or task is None or not getattr(task, "is_done", False):
        return False
    if coordinator.need_rejoin():
        return False
    coordinator.rejoin_needed = True
    log.warning("kafka-python dropped a finished group join; rejoining")
    return True

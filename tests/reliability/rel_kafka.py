"""Kafka side of the reliability scenarios: the adapter as a real process, a request stream, and a
collector that reads every result and error back.

Used by tests/reliability/test_kafka_faults.py (short mode) and bench/bench_reliability.py (long
mode). The adapter runs as ``python -m common.kafka_adapter`` in its own process, exactly as it is
deployed, so that SIGKILL is a real crash: no ``finally``, no commit, no leaving the group.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kerr
from rel_support import REPO, tree_rss, wait_for

from common.contract import encode_pixels
from common.messaging.kafka.admin import ensure_topic

# Short group timeouts (6 s is the broker's minimum session): a killed member is evicted quickly.
GROUP_ARGS = ["--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000"]


@dataclass(frozen=True)
class Names:
    requests: str
    results: str
    errors: str
    group: str


def new_topics(bootstrap: str, partitions: int = 2, tag: str | None = None) -> Names:
    """Fresh, uniquely named topics and group for one scenario."""
    tag = tag or uuid.uuid4().hex[:6]
    names = Names(f"rel-req-{tag}", f"rel-res-{tag}", f"rel-err-{tag}", f"rel-grp-{tag}")
    ensure_topic(bootstrap, names.requests, partitions)
    ensure_topic(bootstrap, names.results, partitions)
    ensure_topic(bootstrap, names.errors, 1)
    return names


# --- requests ----------------------------------------------------------------------------------


def request_id(i: int) -> str:
    return f"rel-{i:06d}"


def is_poison(i: int, every: int) -> bool:
    """Every ``every``-th request is invalid on purpose: its answer is an error, also exactly once."""
    return every > 0 and i % every == every - 1


def request_record(i: int, images: np.ndarray, poison_every: int = 100) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Request ``i``: one real test image in the compact binary form, or a malformed JSON request."""
    rid = request_id(i)
    if is_poison(i, poison_every):
        body = json.dumps({"request_id": rid, "instances": [[0] * 783]}).encode()
        return body, [("content_type", b"application/json"), ("request_id", rid.encode())]
    data, attributes = encode_pixels(rid, images[i % len(images)][None], top_k=2)
    return data, [(k, v.encode()) for k, v in attributes.items()]


def produce_requests(bootstrap: str, topic: str, ids: range, images: np.ndarray, poison_every: int = 100) -> float:
    """Produce requests ``ids`` (acks=all) and return the seconds it took."""
    started = time.monotonic()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024)
    try:
        for i in ids:
            value, headers = request_record(i, images, poison_every)
            producer.send(topic, value, key=request_id(i).encode(), headers=headers)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    return time.monotonic() - started


# --- reading the answers back ------------------------------------------------------------------


def normalised(payload: dict[str, Any]) -> str:
    """An answer without its latency (the one field that differs between two deliveries)."""
    return json.dumps({k: v for k, v in payload.items() if k != "latency_ms"}, sort_keys=True)


class Collector:
    """Reads the results and errors topics from the start, on a thread, and keeps every answer.

    Survives a broker restart (kafka-python reconnects; errors inside poll are retried).
    """

    def __init__(self, bootstrap: str, names: Names) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.answers: dict[str, list[str]] = defaultdict(list)  # request id -> normalised answers
        self.kinds: dict[str, set[str]] = defaultdict(set)
        self.records = 0
        self.unparsable = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self.error: BaseException | None = None
        self._trigger: tuple[int, threading.Event] | None = None

    def when_answered(self, count: int) -> threading.Event:
        """An event set by the reading thread the moment ``count`` distinct requests are answered,
        so a kill can follow the answers closely (often while the batch is still uncommitted)."""
        event = threading.Event()
        with self._lock:
            self._trigger = (count, event)
            if len(self.answers) >= count:
                event.set()
        return event

    def start(self) -> Collector:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                     auto_offset_reset="earliest", reconnect_backoff_max_ms=500)
            parts = []
            for topic in (self.names.results, self.names.errors):

                def known(t: str = topic) -> bool:
                    return bool(consumer.partitions_for_topic(t))

                wait_for(known, 30, f"metadata of {topic}")
                parts += [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            while not self._stop.is_set():
                try:
                    polled = consumer.poll(timeout_ms=200)
                except kerr.KafkaError:
                    continue  # broker restarting: kafka-python reconnects on the next poll
                for tp, recs in polled.items():
                    kind = "result" if tp.topic == self.names.results else "error"
                    self._add(kind, recs)
            consumer.close()
        except BaseException as exc:  # surfaced by the waiting side
            self.error = exc

    def _add(self, kind: str, records: list[Any]) -> None:
        with self._lock:
            for r in records:
                self.records += 1
                try:
                    payload = json.loads(r.value)
                    rid = payload.get("request_id") or f"?{payload.get('message_id')}"
                except (ValueError, AttributeError):
                    self.unparsable += 1
                    continue
                self.answers[rid].append(normalised(payload))
                self.kinds[rid].add(kind)
                if self._trigger is not None and len(self.answers) >= self._trigger[0]:
                    self._trigger[1].set()

    def answered(self) -> int:
        with self._lock:
            return len(self.answers)

    def has_all(self, ids: set[str]) -> bool:
        if self.error is not None:
            raise AssertionError(f"collector failed: {self.error!r}")
        with self._lock:
            return ids.issubset(self.answers.keys())

    def snapshot(self) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
        with self._lock:
            return {k: list(v) for k, v in self.answers.items()}, {k: set(v) for k, v in self.kinds.items()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def committed_total(bootstrap: str, group: str) -> int:
    """Sum of the group's committed offsets (= records whose answers were acknowledged)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(meta.offset for meta in offsets.values() if meta.offset > 0)
    except kerr.KafkaError:
        return -1
    finally:
        admin.close()


# --- the adapter process -----------------------------------------------------------------------


class AdapterProcess:
    """``python -m common.kafka_adapter`` in its own session, logging to a file."""

    def __init__(self, bootstrap: str, names: Names, model: Path, log_path: Path, *, max_batch: int = 64,
                 env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "common.kafka_adapter", "--bootstrap-servers", bootstrap,
                     "--requests-topic", names.requests, "--results-topic", names.results,
                     "--errors-topic", names.errors, "--group-id", names.group, "--model-uri", str(model),
                     "--max-batch", str(max_batch), *GROUP_ARGS]
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "LOG_LEVEL": "WARNING", **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AdapterProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        return tree_rss(self.pid) if self.alive() else 0

    def kill(self) -> None:
        """SIGKILL: a crash (no batch finished, nothing committed, the group not left)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the adapter finishes its batch, commits and exits (0 expected)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return -9
        return int(self.proc.returncode)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# --- scenario 1: SIGKILL the adapter at random points --------------------------------------------


@dataclass
class CrashReport:
    requests: int
    kills: int
    kill_points: list[int]
    answered_at_kill: list[int]
    distinct_answered: int = 0
    lost: int = 0
    duplicates: int = 0  # extra deliveries of an answer, all identical
    conflicting: int = 0  # request ids with two different answers (must be 0)
    unexpected: int = 0  # answers for ids never sent
    errors_expected: int = 0
    errors_seen: int = 0
    committed: int = 0
    exit_code_last: int | None = None
    seconds: float = 0.0
    produce_seconds: float = 0.0
    max_rss_mb: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_crash_scenario(bootstrap: str, model: Path, work: Path, *, n: int, kills: int = 3, seed: int = 7,
                       partitions: int = 2, max_batch: int = 64, poison_every: int = 100,
                       timeout: float = 240.0) -> CrashReport:
    """Produce ``n`` requests, run the adapter, SIGKILL and restart it ``kills`` times at seeded random
    points (by answers seen), let the last one finish, then read every answer back."""
    from pipeline.requests import load_test_set

    images, _ = load_test_set()
    rng = random.Random(seed)
    points = sorted(rng.sample(range(n // 10, n * 9 // 10), kills))
    names = new_topics(bootstrap, partitions)
    report = CrashReport(requests=n, kills=kills, kill_points=points, answered_at_kill=[])
    started = time.monotonic()
    deadline = started + timeout
    report.produce_seconds = produce_requests(bootstrap, names.requests, range(n), images, poison_every)
    ids = {request_id(i) for i in range(n)}
    collector = Collector(bootstrap, names).start()
    peak = [0]

    def sample(adapter: AdapterProcess) -> None:
        peak[0] = max(peak[0], adapter.rss())

    adapter = AdapterProcess(bootstrap, names, model, work / "adapter-0.log", max_batch=max_batch).start()
    try:
        for k, point in enumerate(points):
            reached = collector.when_answered(point)
            while not reached.wait(0.1):
                if not adapter.alive():
                    raise AssertionError(f"adapter exited on its own:\n{adapter.log_tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {point} answers before kill {k + 1}")
                sample(adapter)
            report.answered_at_kill.append(collector.answered())
            adapter.kill()
            report.max_rss_mb.append(round(peak[0] / 2**20, 1))
            peak[0] = 0
            adapter = AdapterProcess(bootstrap, names, model, work / f"adapter-{k + 1}.log",
                                     max_batch=max_batch).start()

        def finished(a: AdapterProcess = adapter) -> bool:
            if not a.alive():
                raise AssertionError(f"adapter exited on its own:\n{a.log_tail()}")
            sample(a)
            return collector.has_all(ids)

        wait_for(finished, max(1.0, deadline - time.monotonic()), "an answer to every request")
        wait_for(lambda: committed_total(bootstrap, names.group) == n, max(1.0, deadline - time.monotonic()),
                 "every offset committed")
        report.max_rss_mb.append(round(peak[0] / 2**20, 1))
        report.exit_code_last = adapter.terminate()
    finally:
        if adapter.alive():
            adapter.kill()
        collector.stop()
    report.committed = committed_total(bootstrap, names.group)
    # Read everything once more with a fresh reader, so the verdict does not rest on the live one.
    final = Collector(bootstrap, names).start()
    try:
        wait_for(lambda: final.records >= collector.records, 60, "a second full read of the answers")
    finally:
        final.stop()
    answers, kinds = final.snapshot()
    report.distinct_answered = len(ids & answers.keys())
    report.lost = len(ids - answers.keys())
    report.unexpected = len(answers.keys() - ids)
    report.duplicates = sum(len(v) - 1 for k, v in answers.items() if k in ids)
    report.conflicting = sum(1 for k, v in answers.items() if k in ids and len(set(v)) > 1)
    report.errors_expected = sum(1 for i in range(n) if is_poison(i, poison_every))
    report.errors_seen = sum(1 for i in range(n) if kinds.get(request_id(i)) == {"error"})
    report.seconds = round(time.monotonic() - started, 1)
    return report


# --- scenario 2: the broker goes away and comes back ---------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@dataclass
class RestartReport:
    requests: int
    answered_before_stop: int = 0
    broker_down_seconds: float = 0.0
    recovered_seconds: float = 0.0  # broker back -> every request answered
    lost: int = 0
    duplicates: int = 0
    conflicting: int = 0
    outages: int = 0
    failed_batches_during_outage: int = 0  # > 0: publishes timed out while the broker was away
    committed: int = 0
    exit_code: int | None = None

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_broker_restart_scenario(broker: Any, model: Path, work: Path, *, n: int, stop_at: float = 0.02,
                                 crash: bool = False, timeout: float = 240.0, stall_s: float = 20.0,
                                 hold_s: float = 8.0, max_outages: int = 3) -> RestartReport:
    """Produce most requests, stop (or kill) the broker while the adapter answers them, start it
    again, produce the rest, and check the same adapter process answers everything."""
    from pipeline.requests import load_test_set

    bootstrap = broker.bootstrap_servers
    images, _ = load_test_set(1000)
    names = new_topics(bootstrap, 2)
    report = RestartReport(requests=n)
    deadline = time.monotonic() + timeout
    # Most of the stream is there before the outage, so the adapter is busy (mid-batch, publishing)
    # when the broker goes; the rest is produced once it is back.
    split = n * 9 // 10
    produce_requests(bootstrap, names.requests, range(split), images)
    ids_first = [request_id(i) for i in range(split)]
    collector = Collector(bootstrap, names).start()
    adapter = AdapterProcess(bootstrap, names, model, work / f"adapter-restart-{names.group}.log", max_batch=32,
                             env={"PUBLISH_TIMEOUT_S": "2"}).start()

    def working() -> bool:
        if not adapter.alive():
            raise AssertionError(f"adapter exited:\n{adapter.log_tail()}")
        return collector.answered() >= int(n * stop_at)

    try:
        wait_for(working, max(1.0, deadline - time.monotonic()), "the adapter to be answering")
        report.answered_before_stop = collector.answered()
        down = time.monotonic()
        for _ in range(max_outages):
            failed_before = _read(adapter.log_path).count("batch callback failed")
            if crash:
                broker.kill()
            else:
                broker.stop()
            # Keep the broker away until the adapter has failed a batch (its publishes ran out of
            # time): an outage longer than PUBLISH_TIMEOUT_S, as users meet them in production. The
            # adapter only publishes during the outage if it holds fetched records then, so the
            # outage is repeated (up to max_outages) until that happened once.
            hold_until = time.monotonic() + hold_s
            while (time.monotonic() < hold_until
                   and _read(adapter.log_path).count("batch callback failed") == failed_before):
                time.sleep(0.1)  # polling interval of a deadline-bounded wait
            broker.start()
            report.outages += 1
            report.failed_batches_during_outage = _read(adapter.log_path).count("batch callback failed")
            if report.failed_batches_during_outage > failed_before:
                break
            answered = collector.answered()

            def answering_again(a: int = answered) -> bool:
                return collector.answered() > a + 32 or collector.has_all(set(ids_first))

            wait_for(answering_again, 60, "the adapter to answer again before the next outage")
        back = time.monotonic()
        report.broker_down_seconds = round(back - down, 1)
        produce_requests(bootstrap, names.requests, range(split, n), images)
        ids = {request_id(i) for i in range(n)}

        progress = [collector.answered(), time.monotonic()]

        def all_answered() -> bool:
            if not adapter.alive():
                raise AssertionError(f"adapter exited after the broker restart:\n{adapter.log_tail()}")
            count = collector.answered()
            if count > progress[0]:
                progress[:] = [count, time.monotonic()]
            elif time.monotonic() - progress[1] > stall_s:
                raise AssertionError(f"no new answer for {stall_s:.0f} s with the broker back "
                                     f"({count}/{n} answered): the adapter is stuck\n{adapter.log_tail(8)}")
            return collector.has_all(ids)

        wait_for(all_answered, max(1.0, deadline - time.monotonic()), "every request answered after the restart")
        wait_for(lambda: committed_total(bootstrap, names.group) == n, max(1.0, deadline - time.monotonic()),
                 "every offset committed after the restart")
        report.recovered_seconds = round(time.monotonic() - back, 1)
        report.exit_code = adapter.terminate()
    finally:
        if adapter.alive():
            adapter.kill()
        collector.stop()
    answers, _ = collector.snapshot()
    report.lost = len(ids - answers.keys())
    report.duplicates = sum(len(v) - 1 for k, v in answers.items() if k in ids)
    report.conflicting = sum(1 for k, v in answers.items() if k in ids and len(set(v)) > 1)
    report.committed = committed_total(bootstrap, names.group)
    return report

"""Sustained load for a fixed time, with the resident memory of every serving process sampled.

Two streams, each at a fixed rate for a fixed time:

* Pub/Sub: HTTP POSTs to ingest (batches of requests) -> requests topic -> push -> predict ->
  results topic. Sampled: the ingest and predict servers (gunicorn master and workers).
* Kafka: a producer -> requests topic -> the Kafka adapter -> results topic. Sampled: the adapter.

A leak is memory that grows with the messages handled, so the verdict is the growth between the end
of the warm-up and the end of the run, and its least-squares slope in bytes per message.
Used by tests/reliability/test_load.py (short) and bench/bench_load.py (long).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from kafka import KafkaProducer
from rel_kafka import AdapterProcess, Collector, new_topics, request_id, request_record
from rel_pubsub import Topics, payloads, serve
from rel_support import growth_per_message, tree_rss, wait_for

# Before sampling, a burst of requests warms each process up (allocator arenas, client buffers,
# caches): measured here, the adapter's RSS climbs about 15 MB over its first few thousand messages
# and is flat after that. Samples in the first fifth of the timed run count as warm-up too.
WARMUP_FRACTION = 0.2


@dataclass
class ProcessMemory:
    name: str
    samples: list[tuple[int, int]] = field(default_factory=list)  # (messages handled so far, RSS bytes)

    def steady(self) -> list[tuple[int, int]]:
        if not self.samples:
            return []
        total = self.samples[-1][0]
        return [s for s in self.samples if s[0] >= total * WARMUP_FRACTION]

    def summary(self) -> dict[str, Any]:
        steady = self.steady()
        if len(steady) < 4:
            return {"name": self.name, "samples": len(self.samples)}
        head = statistics.median(r for _, r in steady[:3])
        tail = statistics.median(r for _, r in steady[-3:])
        return {"name": self.name, "samples": len(self.samples),
                "rss_start_mb": round(self.samples[0][1] / 2**20, 1),
                "rss_after_warmup_mb": round(head / 2**20, 1), "rss_end_mb": round(tail / 2**20, 1),
                "growth_mb": round((tail - head) / 2**20, 2),
                "peak_mb": round(max(r for _, r in self.samples) / 2**20, 1),
                "slope_bytes_per_message": round(growth_per_message(steady), 1),
                "messages_in_window": steady[-1][0] - steady[0][0]}


@dataclass
class LoadReport:
    stream: str
    seconds: float
    rate: float
    sent: int = 0
    answered: int = 0
    errors: int = 0
    http_failures: int = 0
    processes: list[ProcessMemory] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"stream": self.stream, "seconds": self.seconds, "target_rate": self.rate, "sent": self.sent,
                "answered": self.answered, "errors": self.errors, "http_failures": self.http_failures,
                "memory": [p.summary() for p in self.processes]}


def _sampler(report: LoadReport, pids: dict[str, int], answered: Any, stop: threading.Event,
             every_s: float) -> threading.Thread:
    report.processes = [ProcessMemory(name) for name in pids]

    def run() -> None:
        while not stop.is_set():
            count = answered()
            for proc, pid in zip(report.processes, pids.values(), strict=True):
                proc.samples.append((count, tree_rss(pid)))
            stop.wait(every_s)

    thread = threading.Thread(target=run, name="rss-sampler", daemon=True)
    thread.start()
    return thread


def _paced(rate: float, seconds: float, chunk: int, send: Any) -> int:
    """Call ``send(first, count)`` so that ``rate`` requests/s go out for ``seconds``; returns the total."""
    started = time.monotonic()
    sent = 0
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            return sent
        due = int(rate * elapsed) + chunk
        if sent < due:
            send(sent, chunk)
            sent += chunk
        else:
            time.sleep(chunk / rate / 4)  # pacing of a fixed-rate sender, not a wait for a condition


def run_kafka_load(bootstrap: str, model: Path, work: Path, *, seconds: float, rate: float, warmup: int = 6000,
                   sample_every_s: float = 0.5) -> LoadReport:
    from pipeline.requests import load_test_set

    images, _ = load_test_set()
    names = new_topics(bootstrap, 2)
    report = LoadReport("kafka", seconds, rate)
    collector = Collector(bootstrap, names).start()
    adapter = AdapterProcess(bootstrap, names, model, work / "adapter-load.log").start()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    stop = threading.Event()
    try:
        def send(first: int, count: int) -> None:
            for i in range(first, first + count):
                value, headers = request_record(i, images, 0)
                producer.send(names.requests, value, key=request_id(i).encode(), headers=headers)

        send(0, warmup)
        wait_for(lambda: collector.answered() >= warmup, 120, "the warm-up burst answered")
        sampler = _sampler(report, {"kafka-adapter": adapter.pid}, collector.answered, stop, sample_every_s)
        report.sent = _paced(rate, seconds, max(1, int(rate / 20)), lambda f, n: send(f + warmup, n)) + warmup
        producer.flush(timeout=60)
        ids = {request_id(i) for i in range(report.sent)}
        wait_for(lambda: collector.has_all(ids) or not adapter.alive(), 120, "every load request answered")
        stop.set()
        sampler.join(timeout=10)
        _, kinds = collector.snapshot()
        report.answered = sum(1 for i in ids if kinds.get(i) == {"result"})
        report.errors = sum(1 for k in kinds.values() if "error" in k)
        assert adapter.alive(), f"adapter died under load:\n{adapter.log_tail()}"
    finally:
        stop.set()
        producer.close(timeout=10)
        adapter.terminate(timeout=30)
        collector.stop()
    return report


def run_pubsub_load(project: str, emulator_host: str, model: Path, work: Path, *, seconds: float, rate: float,
                    batch: int = 10, warmup: int = 600, sample_every_s: float = 0.5) -> LoadReport:
    from pipeline.requests import array_request, b64_request, load_test_set, png_bytes

    images, _ = load_test_set(1000)
    pngs = [png_bytes(img) for img in images[:100]]
    topics = Topics(project)
    settings = topics.settings(model_uri=str(model))
    env = {"PUBSUB_EMULATOR_HOST": emulator_host, "LOG_LEVEL": "WARNING"}
    predict = serve("predict", settings, work, **env)
    ingest = serve("ingest", settings, work, **env)
    topics.push_to(predict.url, ack_deadline_s=30)
    report = LoadReport("pubsub", seconds, rate)
    answered: set[str] = set()
    errors: list[Any] = []
    stop = threading.Event()
    lock = threading.Lock()

    def reader() -> None:
        while not stop.is_set():
            got = topics.pull(topics.results, 1000, timeout=0.5)
            with lock:
                answered.update(p["request_id"] for p in payloads(got))
            errors.extend(topics.pull(topics.errors, 100, timeout=0.1))

    def count() -> int:
        with lock:
            return len(answered)

    def request(i: int) -> dict[str, Any]:
        rid = f"load-{i:07d}"
        if i % 2:  # half JSON arrays, half base64 PNG: both decoding paths stay under load
            return b64_request(rid, [pngs[i % len(pngs)]])
        return array_request(rid, images[i % len(images)][None])

    session = requests.Session()

    def send(first: int, n: int) -> None:
        r = session.post(ingest.url, json=[request(i) for i in range(first, first + n)], timeout=30)
        if r.status_code != 202:
            report.http_failures += 1
            raise AssertionError(f"ingest answered {r.status_code}: {r.text[:300]}")

    threads = [threading.Thread(target=reader, daemon=True)]
    try:
        threads[0].start()
        for first in range(0, warmup, 50):  # warm both instances (publisher, model, arenas) before sampling
            send(first, 50)
        wait_for(lambda: count() >= warmup, 120, "the warm-up burst answered")
        pids = {"ingest": ingest.proc.pid or 0, "predict": predict.proc.pid or 0}
        sampler = _sampler(report, pids, count, stop, sample_every_s)
        report.sent = _paced(rate, seconds, batch, lambda first, n: send(first + warmup, n)) + warmup
        wait_for(lambda: count() >= report.sent, 120, "every load request answered")
        stop.set()
        sampler.join(timeout=10)
        report.answered = count()
        report.errors = len(errors)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        ingest.stop()
        predict.stop()
        topics.delete()
    return report


# Below this many messages after warm-up, RSS noise (a few MB) swamps a per-message slope, so only
# the absolute growth is judged.
MIN_MESSAGES_FOR_SLOPE = 4000


def rss_bound_ok(proc: ProcessMemory, *, max_growth_mb: float, max_slope: float) -> bool:
    """Growth after warm-up within ``max_growth_mb``, and (over a long enough window) a slope within
    ``max_slope`` bytes per message."""
    s = proc.summary()
    if s.get("growth_mb", 0) > max_growth_mb:
        return False
    if s.get("messages_in_window", 0) >= MIN_MESSAGES_FOR_SLOPE:
        return bool(s.get("slope_bytes_per_message", 0) <= max_slope)
    return True


"""End-to-end predict benchmark (issue 5): Kafka adapter vs a seed-style Keras consumer, and the warm
predict function over functions-framework HTTP.

    .venv/bin/python bench/bench_predict_e2e.py [--n 20000] [--seed-n 300] [--http-calls 300]

1. Kafka: ``--n`` one-image binary requests (real Fashion-MNIST test images) are produced to a fresh
   topic first, then ``python -m common.kafka_adapter`` starts; predictions/s is counted from its first
   result to the n-th on the results topic (watched by end offsets), so model loading and start-up
   are left out; every answer is read back and checked afterwards. The served model's own batched
   rate (the ceiling) is measured in the same run.
2. Seed baseline, same broker: a KafkaConsumer in this process calls Keras ``model.predict`` on one
   image per message and produces one result per message, as the original seed code did.
3. HTTP: functions/predict served by functions-framework (on the Pub/Sub emulator, results published
   and acknowledged before the answer), one Pub/Sub push body per POST over one kept-alive
   connection, after warm-up: p50/p99.

Services come from ``devservices``; the Kafka helpers are the reliability suite's (rel_kafka). Prints a
table with the targets and writes ``bench/results/predict_e2e.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "reliability"), str(ROOT / "tests" / "predict")]

import numpy as np  # noqa: E402
from rel_kafka import AdapterProcess, Collector, new_topics, produce_requests, request_id  # noqa: E402
from rel_support import wait_for  # noqa: E402

from common.settings import Settings  # noqa: E402
from devservices import KafkaBroker, PubSubEmulator  # noqa: E402
from pipeline.requests import load_test_set  # noqa: E402

MODEL = ROOT / "models" / "fashion-cnn"
RESULTS = ROOT / "bench" / "results" / "predict_e2e.json"
TARGET_KAFKA_PER_S = 5000.0
TARGET_RATIO = 300.0
TARGET_HTTP_P50_MS = 3.0


def bench_adapter(broker: KafkaBroker, images: np.ndarray, n: int, work: Path, timeout: float) -> dict[str, Any]:
    """Predictions/s of the adapter process, first result to n-th, on a backlog of ``n`` requests.

    While the adapter works, this process only watches the results topic's end offsets (cheap), so
    the measured window is not slowed by a reader parsing every answer on the same two cores; every
    answer is read and checked afterwards. CPU use of the adapter and the broker is sampled too.
    """
    bootstrap, broker_pid = broker.bootstrap_servers, broker.proc.pid if broker.proc else None
    assert broker_pid is not None, "the broker is not running"
    names = new_topics(bootstrap, 2)
    produce_s = produce_requests(bootstrap, names.requests, range(n), images, poison_every=0)
    ids = {request_id(i) for i in range(n)}
    counter = ResultCounter(bootstrap, [names.results, names.errors])
    adapter = AdapterProcess(bootstrap, names, MODEL, work / "adapter.log", max_batch=256).start()
    try:
        def answered(count: int) -> Callable[[], bool]:
            def check() -> bool:
                if not adapter.alive():
                    raise AssertionError(f"adapter exited:\n{adapter.log_tail()}")
                return counter.total() >= count
            return check

        wait_for(answered(1), timeout, "the adapter's first result", interval=0.002)
        first = time.monotonic()
        pids = {"adapter": adapter.pid, "broker": broker_pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wait_for(answered(n), timeout, f"{n} results", interval=0.01)
        last = time.monotonic()
        cores = {name: round((cpu_seconds(pid) - cpu_before[name]) / (last - first), 2) for name, pid in pids.items()}
    finally:
        adapter.terminate()
        counter.close()
    collector = Collector(bootstrap, names).start()
    try:
        wait_for(lambda: collector.has_all(ids), 120, f"reading back {n} answers", interval=0.05)
    finally:
        collector.stop()
    answers, kinds = collector.snapshot()
    errors = sum(1 for k in ids if "error" in kinds.get(k, set()))
    seconds = last - first
    stamped = result_timestamps_s(bootstrap, names.results, n)
    # The first result arrives with its whole batch; count the n-1 after it over the elapsed time.
    return {"requests": n, "produce_s": round(produce_s, 2), "first_to_last_s": round(seconds, 3),
            "predictions_per_s": round((n - 1) / seconds, 1) if seconds > 0 else None,
            "errors": errors, "duplicates": sum(len(v) - 1 for k, v in answers.items() if k in ids),
            "cores_used": cores,
            # Cross-check independent of this process's watch: the results' own (producer) timestamps.
            "record_timestamps_first_to_last_s": round(stamped, 3),
            "predictions_per_s_by_record_timestamps": round((n - 1) / stamped, 1) if stamped > 0 else None}


class ResultCounter:
    """How many records the given topics hold, from their end offsets (no record is read)."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        self._partitions = [TopicPartition(t, p) for t in topics
                            for p in sorted(self._consumer.partitions_for_topic(t) or ())]

    def total(self) -> int:
        return sum(self._consumer.end_offsets(self._partitions).values())

    def close(self) -> None:
        self._consumer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def result_timestamps_s(bootstrap: str, topic: str, n: int) -> float:
    """Seconds between the earliest and latest record timestamp on ``topic`` (``n`` records)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        stamps: list[int] = []
        deadline = time.monotonic() + 60
        while len(stamps) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                stamps.extend(r.timestamp for r in records)
    finally:
        consumer.close()
    return (max(stamps) - min(stamps)) / 1000.0 if stamps else 0.0


def bench_ceiling(images: np.ndarray, batch: int = 256, seconds: float = 3.0) -> dict[str, Any]:
    """The served model's own batched compute rate in this process (LiteRT, as the adapter loads it)."""
    from common.predictor import FMPredictor

    predictor = FMPredictor(str(MODEL), settings=Settings.from_env({}, model_uri=str(MODEL)))
    model = predictor.load()
    x = images[:batch].astype(np.float32)[..., None] / 255.0
    model.predict_proba(x)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_proba(x)
        done += batch
    return {"batch": batch, "runtime": model.runtime,
            "images_per_s": round(done / (time.perf_counter() - started), 1)}


def bench_seed(bootstrap: str, images: np.ndarray, n: int, timeout: float) -> dict[str, Any]:
    """The seed-style consumer: Keras ``model.predict`` on one image per Kafka message."""
    import keras
    from kafka import KafkaConsumer, KafkaProducer

    model = keras.models.load_model(MODEL / "model.keras")
    class_names = json.loads((MODEL / "manifest.json").read_text())["class_names"]
    names = new_topics(bootstrap, 1)
    produce_requests(bootstrap, names.requests, range(n), images, poison_every=0)
    consumer = KafkaConsumer(names.requests, bootstrap_servers=bootstrap, group_id=names.group,
                             auto_offset_reset="earliest", enable_auto_commit=True)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    done = 0
    first = last = 0.0
    deadline = time.monotonic() + timeout
    try:
        while done < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    x = np.frombuffer(record.value, np.uint8).reshape(1, 28, 28, 1).astype(np.float32) / 255.0
                    probs = model.predict(x, verbose=0)[0]
                    rid = dict(record.headers).get("request_id", b"").decode()
                    label = class_names[int(np.argmax(probs))]
                    producer.send(names.results, json.dumps({"request_id": rid, "label": label,
                                                             "score": float(np.max(probs))}).encode())
                    done += 1
                    if done == 1:
                        first = time.monotonic()
                    last = time.monotonic()
        producer.flush(timeout=60)
        last = time.monotonic()
    finally:
        consumer.close()
        producer.close(timeout=10)
    if done < n:
        raise AssertionError(f"seed consumer answered {done}/{n} before the deadline")
    seconds = last - first
    return {"requests": n, "first_to_last_s": round(seconds, 3),
            "predictions_per_s": round((n - 1) / seconds, 2) if seconds > 0 else None}


def bench_http(images: np.ndarray, calls: int, warmup: int, work: Path) -> dict[str, Any]:
    """Per-call latency of the warm predict function: one push body per POST, one at a time."""
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    from test_predict_function import push_body

    from common.messaging.pubsub.admin import ensure_topic
    from pipeline.servers import FunctionServer, settings_env

    with PubSubEmulator() as emulator:
        tag = uuid.uuid4().hex[:6]
        topics = {"requests_topic": f"req-{tag}", "results_topic": f"res-{tag}", "errors_topic": f"err-{tag}"}
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host  # for ensure_topic in this process
        for name in topics.values():
            ensure_topic(emulator.project, name)
        settings = Settings.from_env({}, project_id=emulator.project, model_uri=str(MODEL),
                                     model_cache_dir=str(work / "cache"), **topics)
        env = {**settings_env(settings), "PUBSUB_EMULATOR_HOST": emulator.host, "LOG_LEVEL": "WARNING"}
        with FunctionServer("predict", "predict", ROOT / "functions" / "predict" / "main.py",
                            signature_type="cloudevent", env=env, log_dir=work) as server:
            # One kept-alive connection from the standard library: `requests` adds about 1 ms of
            # its own per call on this machine, which is the client's cost, not the function's.
            url = urlsplit(server.url)
            connection = HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
            latencies = []
            try:
                for i in range(warmup + calls):
                    request = {"request_id": f"http-{i:05d}", "instances": [images[i % len(images)].tolist()]}
                    body = push_body(request, str(1000 + i))
                    started = time.perf_counter()
                    connection.request("POST", url.path or "/", body=body,
                                       headers={"Content-Type": "application/json"})
                    response = connection.getresponse()
                    text = response.read()
                    elapsed = time.perf_counter() - started
                    if response.status != 200:
                        raise AssertionError(f"HTTP {response.status}: {text[:500]!r}\n"
                                             f"{server.log_path.read_text()[-2000:]}")
                    if i >= warmup:
                        latencies.append(elapsed * 1000.0)
            finally:
                connection.close()
    latencies.sort()
    return {"calls": calls, "warmup": warmup, "p50_ms": round(statistics.median(latencies), 3),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
            "mean_ms": round(statistics.fmean(latencies), 3)}


def table(results: dict[str, Any]) -> str:
    kafka, seed, http = results["kafka_adapter"], results["seed_consumer"], results["http_function"]
    ratio = results["ratio_adapter_over_seed"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rows = [("measure", "value", "target", ""),
            ("Kafka adapter predictions/s", f"{kafka['predictions_per_s']:,.0f}", f">= {TARGET_KAFKA_PER_S:,.0f}",
             verdict(kafka["predictions_per_s"] >= TARGET_KAFKA_PER_S)),
            ("seed consumer predictions/s", f"{seed['predictions_per_s']:,.1f}", "", ""),
            ("adapter / seed", f"{ratio:,.0f}x", f">= {TARGET_RATIO:.0f}x", verdict(ratio >= TARGET_RATIO)),
            ("model ceiling images/s (batch 256)", f"{results['model_ceiling']['images_per_s']:,.0f}", "", ""),
            ("adapter / model ceiling", f"{results['adapter_share_of_ceiling']:.0%}", "", ""),
            ("adapter + broker cores used", " + ".join(f"{v:.2f}" for v in kafka["cores_used"].values()), "", ""),
            ("HTTP function p50 ms", f"{http['p50_ms']:.2f}", f"<= {TARGET_HTTP_P50_MS}",
             verdict(http["p50_ms"] <= TARGET_HTTP_P50_MS)),
            ("HTTP function p99 ms", f"{http['p99_ms']:.2f}", "", "")]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="requests for the Kafka adapter")
    parser.add_argument("--seed-n", type=int, default=300, help="requests for the seed-style consumer")
    parser.add_argument("--http-calls", type=int, default=300, help="measured HTTP calls (after --http-warmup)")
    parser.add_argument("--http-warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    images, _ = load_test_set()
    results: dict[str, Any] = {"bench": "predict_e2e", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "model": str(MODEL.relative_to(ROOT)),
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                               "command": " ".join(["bench/bench_predict_e2e.py",
                                                    *(argv if argv is not None else sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        with KafkaBroker() as broker:
            results["kafka_adapter"] = bench_adapter(broker, images, args.n, work,
                                                     timeout=max(300.0, args.n / 20))
            print("kafka adapter:", json.dumps(results["kafka_adapter"]), flush=True)
            results["seed_consumer"] = bench_seed(broker.bootstrap_servers, images, args.seed_n,
                                                  timeout=max(300.0, args.seed_n))
            print("seed consumer:", json.dumps(results["seed_consumer"]), flush=True)
        results["ratio_adapter_over_seed"] = round(results["kafka_adapter"]["predictions_per_s"]
                                                   / results["seed_consumer"]["predictions_per_s"], 1)
        results["model_ceiling"] = bench_ceiling(images)
        print("model ceiling:", json.dumps(results["model_ceiling"]), flush=True)
        results["adapter_share_of_ceiling"] = round(results["kafka_adapter"]["predictions_per_s"]
                                                    / results["model_ceiling"]["images_per_s"], 3)
        results["http_function"] = bench_http(images, args.http_calls, args.http_warmup, work)
        print("http function:", json.dumps(results["http_function"]), flush=True)
    results["targets"] = {"kafka_predictions_per_s": TARGET_KAFKA_PER_S, "ratio_adapter_over_seed": TARGET_RATIO,
                          "http_p50_ms": TARGET_HTTP_P50_MS}
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Kafka adapter on a real Kafka broker: batches, commits after produce, SIGTERM, redelivery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fm_gcs import PrivateEmulator, client_for
from fm_support import ALLOWED_BUCKET, make_settings
from fm_synth import encode
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from common.contract import validate
from common.errors import StorageUnavailable
from common.kafka_adapter import KafkaPredictAdapter
from common.messaging.kafka.admin import ensure_topic
from common.predict_handler import PredictHandler
from common.predictor import FMPredictor

REPO = Path(__file__).resolve().parents[2]
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def _topics(bootstrap: str, partitions: int = 2) -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    names = {"requests": f"req-{tag}", "results": f"res-{tag}", "errors": f"err-{tag}", "group": f"grp-{tag}"}
    ensure_topic(bootstrap, names["requests"], partitions)
    ensure_topic(bootstrap, names["results"])
    ensure_topic(bootstrap, names["errors"])
    return names


def _settings(bootstrap: str, names: dict[str, str], model: Path, **extra: Any) -> Any:
    return make_settings(broker="kafka", kafka_bootstrap_servers=bootstrap, requests_topic=names["requests"],
                         results_topic=names["results"], errors_topic=names["errors"],
                         kafka_group_id=names["group"], model_uri=str(model), **extra)


def produce(bootstrap: str, topic: str, requests: list[dict[str, Any]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for r in requests:
        producer.send(topic, json.dumps(r).encode(), key=r["request_id"].encode(),
                      headers=[("content_type", b"application/json")])
    producer.flush(timeout=30)
    producer.close()


def consume(bootstrap: str, topic: str, want: int, timeout: float = 60.0) -> list[Any]:
    """Read a topic from the start until ``want`` records arrived or the deadline passed."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(records)
    finally:
        consumer.close()
    return got


def committed_total(bootstrap: str, group: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(meta.offset for meta in offsets.values() if meta.offset > 0)
    finally:
        admin.close()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling interval of a deadline-bounded wait


@pytest.fixture
def running(kafka_broker: Any, tiny_model: Path) -> Iterator[tuple[KafkaPredictAdapter, dict[str, str], str]]:
    bootstrap = kafka_broker.bootstrap_servers
    names = _topics(bootstrap)
    adapter = KafkaPredictAdapter(_settings(bootstrap, names, tiny_model), max_batch=16, max_wait_ms=50,
                                  **FAST_GROUP)
    thread = threading.Thread(target=adapter.run, daemon=True)
    thread.start()
    assert adapter.wait_ready(60), "partitions were not assigned"
    yield adapter, names, bootstrap
    adapter.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_every_request_is_answered_in_batches_and_committed(
    running: tuple[KafkaPredictAdapter, dict[str, str], str], fashion_test: tuple[np.ndarray, np.ndarray]
) -> None:
    adapter, names, bootstrap = running
    x = fashion_test[0]
    good = [{"request_id": f"k-{i}", "top_k": 2, "instances": x[i : i + 2].tolist()} for i in range(0, 80, 2)]
    bad = [{"request_id": "k-bad", "instances": [[0] * 10]}]
    produce(bootstrap, names["requests"], good + bad)
    results = consume(bootstrap, names["results"], len(good))
    errors = consume(bootstrap, names["errors"], 1)
    by_id = {json.loads(r.value)["request_id"]: json.loads(r.value) for r in results}
    assert set(by_id) == {r["request_id"] for r in good}
    predictor = adapter.handler.predictor
    for i in range(0, 80, 2):
        validate("result", by_id[f"k-{i}"])
        assert by_id[f"k-{i}"]["predictions"] == predictor.predict(x[i : i + 2], top_k=2)
    assert [r.key for r in results if r.key == b"k-0"] == [b"k-0"], "results are keyed by request id"
    [error] = errors
    assert json.loads(error.value)["request_id"] == "k-bad"
    wait_for(lambda: committed_total(bootstrap, names["group"]) == len(good) + 1, 30, "offsets committed")
    assert adapter.batches < adapter.records == len(good) + 1, "records were micro-batched"


def test_transient_fault_is_not_committed_and_the_batch_is_redelivered(
    kafka_broker: Any, tiny_model: Path, fashion_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    names = _topics(bootstrap, partitions=1)
    emulator = PrivateEmulator(tmp_path / "gcs").start()  # on disk: the image survives the outage
    try:
        client = client_for(emulator.endpoint)
        client.create_bucket(ALLOWED_BUCKET)
        client.bucket(ALLOWED_BUCKET).blob("shoe.png").upload_from_string(encode(fashion_test[0][0], ".png"))
        settings = _settings(bootstrap, names, tiny_model)
        handler = PredictHandler(settings, FMPredictor(str(tiny_model), settings=settings, storage_client=client))
        failures: list[BaseException] = []
        real = handler.prepare_events  # where images are fetched from storage

        def spy(events: Any) -> Any:  # records what the real handler raised
            try:
                return real(events)
            except Exception as exc:
                failures.append(exc)
                raise

        handler.prepare_events = spy  # type: ignore[method-assign]
        adapter = KafkaPredictAdapter(settings, handler=handler, max_batch=8, max_wait_ms=20,
                                      retry_backoff_s=0.05, max_retry_backoff_s=0.2, **FAST_GROUP)
        thread = threading.Thread(target=adapter.run, daemon=True)
        thread.start()
        try:
            assert adapter.wait_ready(60)
            emulator.stop()  # storage goes down before the request that needs it arrives
            produce(bootstrap, names["requests"], [
                {"request_id": "needs-gcs", "instances": [{"gcs_uri": f"gs://{ALLOWED_BUCKET}/shoe.png"}]}])
            wait_for(lambda: len(failures) >= 2, 120, "the batch to fail and be retried")
            assert all(isinstance(f, StorageUnavailable) for f in failures)
            assert committed_total(bootstrap, names["group"]) == 0, "nothing committed while failing"
            emulator.start()  # same port, same data
            [result] = consume(bootstrap, names["results"], 1, timeout=120)
            assert json.loads(result.value)["request_id"] == "needs-gcs"
            wait_for(lambda: committed_total(bootstrap, names["group"]) == 1, 30, "the commit after success")
        finally:
            adapter.stop()
            thread.join(timeout=30)
    finally:
        emulator.stop()


def test_console_command_finishes_its_batch_and_exits_0_on_sigterm(
    kafka_broker: Any, tiny_model: Path, fashion_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    names = _topics(bootstrap)
    x = fashion_test[0]
    requests = [{"request_id": f"s-{i}", "instances": [x[i].tolist()]} for i in range(60)]
    produce(bootstrap, names["requests"], requests)
    log_path = tmp_path / "adapter.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODEL_URI": str(tiny_model), "ALLOWED_BUCKETS": ALLOWED_BUCKET}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "common.kafka_adapter", "--bootstrap-servers", bootstrap,
             "--requests-topic", names["requests"], "--results-topic", names["results"],
             "--errors-topic", names["errors"], "--group-id", names["group"], "--max-batch", "4",
             "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Stop it while it is still working through the backlog.
            first = consume(bootstrap, names["results"], 1, timeout=90)
            assert first, "the adapter answered nothing"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line["message"] == "stopped" for line in lines)
    committed = committed_total(bootstrap, names["group"])
    answered = {json.loads(r.value)["request_id"] for r in consume(bootstrap, names["results"], 60, timeout=5)}
    assert committed >= 1
    assert len(answered) >= committed, "every committed record had its result produced first"
    # A new member picks up exactly where the first stopped: everything gets answered.
    settings = _settings(bootstrap, names, tiny_model)
    adapter = KafkaPredictAdapter(settings, max_batch=16, **FAST_GROUP)
    thread = threading.Thread(target=adapter.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: committed_total(bootstrap, names["group"]) == 60, 90, "the rest to be answered")
    finally:
        adapter.stop()
        thread.join(timeout=30)
    answered = {json.loads(r.value)["request_id"] for r in consume(bootstrap, names["results"], 60)}
    assert answered == {r["request_id"] for r in requests}


def test_rebalance_after_adding_partitions_completes_despite_short_polls(kafka_broker: Any) -> None:
    """kafka-python 3.0.12 drops such a join (see rescue_orphaned_join); our KafkaListener does not."""
    from kafka.admin import NewPartitions

    from common.messaging.kafka.listener import KafkaListener

    bootstrap = kafka_broker.bootstrap_servers
    topic = f"grow-{uuid.uuid4().hex[:6]}"
    ensure_topic(bootstrap, topic, 1)
    # poll_timeout_ms=1: every poll gives up long before a JoinGroup round trip ends.
    listener = KafkaListener(bootstrap, topic, group_id=f"grp-{topic}", poll_timeout_ms=1,
                             metadata_max_age_ms=500, **FAST_GROUP)
    seen: list[int] = []
    thread = threading.Thread(target=listener.listen_batch,
                              args=(lambda batch: seen.extend(m.raw.partition for m in batch), 8, 0), daemon=True)
    thread.start()
    try:
        assert listener.wait_ready(60)
        wait_for(lambda: len(listener.assignment()) == 1, 30, "the first assignment")
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_partitions({topic: NewPartitions(total_count=3)})
        finally:
            admin.close()
        wait_for(lambda: len(listener.assignment()) == 3, 60, "the new partitions to be assigned")
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.send(topic, b"{}", partition=2).get(timeout=30)
        producer.close()
        wait_for(lambda: 2 in seen, 30, "a record of a new partition to be delivered")
    finally:
        listener.stop()
        thread.join(timeout=30)
        listener.close()

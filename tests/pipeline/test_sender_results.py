"""The people-facing commands against the real Pub/Sub emulator: the sender and the results follower."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from common.contract import EncodedImage, make_error, make_result, parse_request
from common.errors import InvalidImage
from common.messaging import make_publisher
from common.messaging.pubsub.admin import ensure_subscription, ensure_topic
from common.settings import Settings
from pipeline.requests import CLASS_NAMES, load_test_set, png_bytes
from pipeline.servers import REPO_ROOT, FunctionServer


def _env(emulator: Any, **topics: str) -> dict[str, str]:
    return {**os.environ, "PUBSUB_EMULATOR_HOST": emulator.host, "GCP_PROJECT": emulator.project,
            "BROKER": "pubsub", "PYTHONPATH": str(REPO_ROOT), **topics}


def _pull(project: str, subscription: str, count: int, timeout: float = 20.0) -> list[Any]:
    client = pubsub_v1.SubscriberClient()
    path = client.subscription_path(project, subscription)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        response = client.pull(subscription=path, max_messages=100, timeout=5)
        if response.received_messages:
            client.acknowledge(subscription=path, ack_ids=[m.ack_id for m in response.received_messages])
            got.extend(m.message for m in response.received_messages)
    return got


def test_sender_publishes_test_images_files_and_arrays(pubsub_emulator: Any, tmp_path: Path) -> None:
    topic = f"send-{uuid.uuid4().hex[:8]}"
    ensure_topic(pubsub_emulator.project, topic)
    ensure_subscription(pubsub_emulator.project, topic, f"{topic}-check")
    images, labels = load_test_set(5, offset=100)
    np.save(tmp_path / "two.npy", images[:2].astype(np.float32) / 255.0)  # 0-1 floats, as users save them
    (tmp_path / "boot.png").write_bytes(png_bytes(images[0]))

    done = subprocess.run(
        [sys.executable, "-m", "pipeline.sender", "--fashion-mnist", "5", "--offset", "100", "--batch-size", "2",
         "--npy", str(tmp_path / "two.npy"), str(tmp_path / "boot.png"), "--prefix", "t"],
        env=_env(pubsub_emulator, REQUESTS_TOPIC=topic), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "t-fm-00100  sent" in done.stdout
    messages = {m.attributes["request_id"]: m for m in _pull(pubsub_emulator.project, f"{topic}-check", 5)}
    assert sorted(messages) == ["t-file-00000", "t-fm-00100", "t-fm-00102", "t-fm-00104", "t-npy0-00000"]
    settings = Settings()
    parsed = {rid: parse_request(m.data, dict(m.attributes), settings) for rid, m in messages.items()}
    # Test-set images travel as binary pixels, two per request, exactly.
    assert np.allclose(np.stack(parsed["t-fm-00102"].instances), images[2:4] / 255.0)
    assert len(parsed["t-fm-00104"].instances) == 1
    assert np.allclose(np.stack(parsed["t-npy0-00000"].instances), images[:2] / 255.0, atol=1 / 255)
    assert parsed["t-file-00000"].instances == (EncodedImage((tmp_path / "boot.png").read_bytes()),)
    first_line = next(line for line in done.stdout.splitlines() if line.startswith("t-fm-00100"))
    assert first_line.endswith(f"true: {CLASS_NAMES[labels[0]]}, {CLASS_NAMES[labels[1]]})")


def _subscription_exists(project: str, name: str) -> bool:
    client = pubsub_v1.SubscriberClient()
    try:
        client.get_subscription(subscription=client.subscription_path(project, name), timeout=5)
        return True
    except gexc.NotFound:
        return False


def test_results_follower_prints_and_stores_idempotently(pubsub_emulator: Any, tmp_path: Path) -> None:
    results, errors = f"res-{uuid.uuid4().hex[:8]}", f"err-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "results.db"
    follower = subprocess.Popen(
        [sys.executable, "-m", "pipeline.results", "--name", "t", "--db", f"sqlite:///{db}",
         "--jsonl", str(tmp_path / "out.jsonl"), "--count", "4", "--timeout", "60"],
        env=_env(pubsub_emulator, RESULTS_TOPIC=results, ERRORS_TOPIC=errors), cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (_subscription_exists(pubsub_emulator.project, f"{errors}-t")
                   and _subscription_exists(pubsub_emulator.project, f"{results}-t")):
            assert time.monotonic() < deadline and follower.poll() is None, "follower did not subscribe"
            time.sleep(0.2)
        first = make_result("r-1", "fashion-cnn", "v1", [{"label": "Ankle boot", "class_id": 9, "score": 0.97}],
                            time.perf_counter())
        second = make_result("r-2", "fashion-cnn", "v1", [{"label": "Trouser", "class_id": 1, "score": 0.99}],
                             time.perf_counter())
        error = make_error(InvalidImage("instance 0: not a PNG or JPEG", index=0), request_id="r-3")
        with make_publisher(Settings(project_id=pubsub_emulator.project)) as publisher:
            for topic, payload in ((results, first), (results, second), (results, first), (errors, error)):
                publisher.publish_and_wait(topic, payload)
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert "r-1  Ankle boot 0.97" in out
    assert "r-3  ERROR invalid_image [instance 0]: instance 0: not a PNG or JPEG" in out
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT request_id, kind, top_label, top_score, error_code FROM prediction_outcomes "
                            "ORDER BY request_id").fetchall()
    # r-1 arrived twice (at-least-once delivery) and is stored once.
    assert rows == [("r-1", "result", "Ankle boot", 0.97, None), ("r-2", "result", "Trouser", 0.99, None),
                    ("r-3", "error", None, None, "invalid_image")]
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {line["message"]["request_id"] for line in lines} == {"r-1", "r-2", "r-3"}


def test_sender_through_ingest(pubsub_emulator: Any, tmp_path: Path) -> None:
    topic = f"send-http-{uuid.uuid4().hex[:8]}"
    ensure_topic(pubsub_emulator.project, topic)
    ensure_subscription(pubsub_emulator.project, topic, f"{topic}-check")
    env = {"GCP_PROJECT": pubsub_emulator.project, "REQUESTS_TOPIC": topic,
           "PUBSUB_EMULATOR_HOST": pubsub_emulator.host}
    ingest = FunctionServer("ingest", "ingest", REPO_ROOT / "functions" / "ingest" / "main.py", env=env,
                            log_dir=tmp_path).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.sender", "--fashion-mnist", "3", "--prefix", "h", "--ingest", ingest.url],
            env=_env(pubsub_emulator), cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )
    finally:
        ingest.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    messages = _pull(pubsub_emulator.project, f"{topic}-check", 3)
    assert sorted(m.attributes["request_id"] for m in messages) == ["h-fm-00000", "h-fm-00001", "h-fm-00002"]
    images, _ = load_test_set(3)
    first = next(m for m in messages if m.attributes["request_id"] == "h-fm-00000")
    assert np.allclose(parse_request(first.data, dict(first.attributes), Settings()).instances[0], images[0] / 255.0)

"""Pub/Sub: a transient fault is retried until it succeeds, a poison message is answered once, and
ingest says so loudly (503) when it cannot publish.

All on real services: the Pub/Sub emulator with a push subscription to predict served by
functions-framework, a Cloud Storage emulator that is stopped and started again, and ingest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from rel_pubsub import Topics, log_events, payloads, predict_test_helpers, serve
from rel_support import wait_for

from common.contract import validate
from devservices import PubSubEmulator

predict_test_helpers()
from fm_gcs import PrivateEmulator, client_for, upload_folder  # noqa: E402  (tests/predict helpers)

MODEL_BUCKET = "rel-models"


@pytest.fixture(scope="module")
def local_stack(pubsub_emulator: Any, serving_model: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topics, Any]]:
    """Topics and predict (model from a local folder) behind a push subscription."""
    topics = Topics(pubsub_emulator.project)
    work = tmp_path_factory.mktemp("rel-pubsub")
    predict = serve("predict", topics.settings(model_uri=str(serving_model)), work,
                    PUBSUB_EMULATOR_HOST=pubsub_emulator.host)
    topics.push_to(predict.url, ack_deadline_s=10)
    try:
        yield topics, predict
    finally:
        predict.stop()
        topics.delete()


def _request(rid: str) -> bytes:
    return json.dumps({"request_id": rid, "instances": [[0] * 784]}).encode()


def test_storage_down_at_cold_start_is_redelivered_until_it_succeeds(pubsub_emulator: Any, serving_model: Path,
                                                                     tmp_path: Path) -> None:
    storage = PrivateEmulator(tmp_path / "gcs").start()  # on disk: the model survives the outage
    topics = Topics(pubsub_emulator.project)
    predict = None
    try:
        model_uri = upload_folder(client_for(storage.endpoint), MODEL_BUCKET, "fashion", serving_model)
        predict = serve("predict", topics.settings(model_uri=model_uri, model_cache_dir=str(tmp_path / "cache")),
                        tmp_path, PUBSUB_EMULATOR_HOST=pubsub_emulator.host,
                        STORAGE_EMULATOR_HOST=storage.endpoint)
        topics.push_to(predict.url, ack_deadline_s=10, min_retry_backoff_s=1, max_retry_backoff_s=2)
        storage.stop()  # the instance is cold: its first message needs the model from storage
        message_id = topics.publish(_request("cold-1"), {"content_type": "application/json"})
        log = predict.log_path
        wait_for(lambda: log.read_text(errors="replace").count("StorageUnavailable") >= 1, 90,
                 "predict to fail on the unreachable storage")
        assert topics.pull(topics.results, 1, timeout=1) == [], "no result while storage is down"
        storage.start()  # same port, same data
        [result] = payloads(topics.pull(topics.results, 1, timeout=90))
        validate("result", result)
        assert result["request_id"] == "cold-1"
        assert topics.drain(topics.errors, quiet_s=1) == [], "a transient fault is never answered as an error"
        text = log.read_text(errors="replace")
        assert text.count("StorageUnavailable") >= 1 and '"predicted"' in text
        assert message_id in text, "the one published message was delivered again and answered"
    finally:
        if predict is not None:
            predict.stop()
        storage.stop()
        topics.delete()


def test_poison_message_is_answered_once_and_never_redelivered(local_stack: tuple[Topics, Any]) -> None:
    topics, predict = local_stack
    poison_id = topics.publish(b'{"request_id": "poison-1", "instances": [[0, 0', {"request_id": "poison-1"})
    [error] = payloads(topics.pull(topics.errors, 1))
    validate("error", error)
    assert error["request_id"] == "poison-1" and error["error"]["code"] == "invalid_json"
    assert error["message_id"] == poison_id
    # Later traffic flows, and the poison message does not come back: had predict failed (non-2xx)
    # the emulator would push it again within about a second (as the storage test above shows).
    topics.publish(_request("after-poison"), {"content_type": "application/json"})
    [result] = payloads(topics.pull(topics.results, 1))
    assert result["request_id"] == "after-poison"
    assert topics.drain(topics.errors, quiet_s=6, timeout=30) == [], "the poison message was answered again"
    handled = [e for e in log_events(predict.log_path) if e.get("message_id") == poison_id]
    assert [e["message"] for e in handled] == ["rejected"], "delivered and handled exactly once"
    assert predict.proc.alive()


def test_ingest_answers_503_while_the_emulator_is_down_and_recovers(tmp_path: Path) -> None:
    emulator = PubSubEmulator(work_dir=tmp_path / "emulator").start()  # a private one: it is stopped here
    topics = None
    ingest = None
    try:
        with pytest.MonkeyPatch.context() as mp:  # the admin and pull clients below read it
            mp.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
            topics = Topics(emulator.project)
            ingest = serve("ingest", topics.settings(publish_timeout_s=2.0), tmp_path,
                           PUBSUB_EMULATOR_HOST=emulator.host)
            body: list[dict[str, Any]] = [{"request_id": f"up-{i}", "instances": [[0] * 784]} for i in range(2)]
            assert requests.post(ingest.url, json=body, timeout=30).status_code == 202
            emulator.stop()
            started = time.monotonic()
            down = requests.post(ingest.url, json=[{"request_id": f"down-{i}", "instances": [[0] * 784]}
                                                   for i in range(3)], timeout=60)
            elapsed = time.monotonic() - started
            health = requests.get(ingest.url, timeout=10)
            emulator.start()
            topics = Topics(emulator.project, tag=topics.tag)  # the emulator keeps nothing across restarts

            def accepted() -> bool:
                r = requests.post(ingest.url, json=[{"request_id": "back-1", "instances": [[0] * 784]}], timeout=60)
                return r.status_code == 202

            wait_for(accepted, 60, "ingest to publish again once the emulator is back", interval=0.5)
    finally:
        if ingest is not None:
            ingest.stop()
        emulator.cleanup()
    assert down.status_code == 503, down.text
    assert elapsed < 2.0 + 10, f"the failure took {elapsed:.1f} s to report"
    error = down.json()
    assert error["error"]["code"] == "broker_unavailable"
    assert error["failed"] == ["down-0", "down-1", "down-2"] and error["published"] == []
    assert down.headers.get("Retry-After")
    assert health.status_code == 200, "ingest itself stayed up"

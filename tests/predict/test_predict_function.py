"""functions/predict served by functions-framework over real HTTP, on the Pub/Sub emulator.

Tier 2: CloudEvents and Pub/Sub push bodies POSTed to the server; the outcome is pulled from the
emulator's results / errors topics. Tier 3: a real push subscription delivers a published request.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fm_gcs import free_port
from google.cloud import pubsub_v1

from common.contract import validate
from common.messaging.pubsub.admin import ensure_subscription, ensure_topic
from pipeline.servers import FunctionServer, settings_env

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Topics:
    project: str
    requests: str
    results: str
    errors: str

    def sub(self, topic: str) -> str:
        return f"projects/{self.project}/subscriptions/{topic}-pull"


@pytest.fixture(scope="module")
def topics(pubsub_emulator: Any) -> Topics:
    tag = uuid.uuid4().hex[:6]
    t = Topics(pubsub_emulator.project, f"req-{tag}", f"res-{tag}", f"err-{tag}")
    for name in (t.requests, t.results, t.errors):
        ensure_topic(t.project, name)
    for name in (t.results, t.errors):
        ensure_subscription(t.project, name, f"{name}-pull")
    return t


def _env(topics: Topics, model_uri: str, cache: Path, **extra: str) -> dict[str, str]:
    from fm_support import make_settings

    settings = make_settings(project_id=topics.project, requests_topic=topics.requests,
                             results_topic=topics.results, errors_topic=topics.errors, model_uri=model_uri,
                             model_cache_dir=str(cache))
    return {**settings_env(settings), **extra}


@pytest.fixture(scope="module")
def predict_url(pubsub_emulator: Any, topics: Topics, tiny_model: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("predict-fn")
    env = _env(topics, str(tiny_model), work / "cache", PUBSUB_EMULATOR_HOST=pubsub_emulator.host)
    with FunctionServer("predict", "predict", REPO / "functions" / "predict" / "main.py",
                        signature_type="cloudevent", env=env, log_dir=work) as server:
        yield server.url


def pull(subscription: str, want: int, timeout: float = 30.0) -> list[Any]:
    """Pull and ack until ``want`` messages arrived or the deadline passed."""
    client = pubsub_v1.SubscriberClient()
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        response = client.pull(subscription=subscription, max_messages=want - len(got), timeout=5,
                               return_immediately=False)
        if response.received_messages:
            client.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
            got.extend(m.message for m in response.received_messages)
    return got


def push_body(request: dict[str, Any], message_id: str) -> bytes:
    """What a Pub/Sub push subscription POSTs (functions-framework turns it into a CloudEvent)."""
    data = base64.b64encode(json.dumps(request).encode()).decode()
    return json.dumps({"message": {"data": data, "attributes": {"content_type": "application/json"},
                                   "messageId": message_id, "publishTime": "2026-11-26T12:00:00Z"},
                       "subscription": "projects/p/subscriptions/s"}).encode()


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 60.0) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_push_body_request_is_answered_on_the_results_topic(
    predict_url: str, topics: Topics, fashion_test: tuple[np.ndarray, np.ndarray]
) -> None:
    request = {"request_id": "fn-ok-1", "top_k": 2, "instances": fashion_test[0][:3].tolist()}
    assert post(predict_url, push_body(request, "100"), {}) == 200
    [message] = pull(topics.sub(topics.results), 1)
    result = json.loads(message.data)
    validate("result", result)
    assert result["request_id"] == "fn-ok-1" and len(result["predictions"]) == 3
    assert message.attributes["request_id"] == "fn-ok-1"
    assert result["predictions"][0]["label"] in ("Ankle boot", "Sneaker", "Sandal")  # test image 0 is a boot


def test_binary_cloudevent_is_answered(predict_url: str, topics: Topics,
                                       fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    body = json.dumps({"message": {"data": base64.b64encode(json.dumps(
        {"request_id": "fn-ce-1", "instances": [fashion_test[0][1].tolist()]}).encode()).decode(),
        "messageId": "200"}, "subscription": "s"}).encode()
    headers = {"ce-specversion": "1.0", "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
               "ce-source": "//pubsub.googleapis.com/projects/p/topics/t", "ce-id": "200"}
    assert post(predict_url, body, headers) == 200
    [message] = pull(topics.sub(topics.results), 1)
    assert json.loads(message.data)["request_id"] == "fn-ce-1"


def test_invalid_request_goes_to_errors_and_is_acknowledged(predict_url: str, topics: Topics) -> None:
    request = {"request_id": "fn-bad-1", "instances": [[0] * 783]}
    assert post(predict_url, push_body(request, "300"), {}) == 200, "2xx: Pub/Sub must not redeliver"
    [message] = pull(topics.sub(topics.errors), 1)
    error = json.loads(message.data)
    validate("error", error)
    assert error["request_id"] == "fn-bad-1" and error["error"]["code"] in ("invalid_shape", "invalid_request")
    assert error["message_id"] == "300"


def test_storage_down_answers_500_so_pubsub_redelivers(pubsub_emulator: Any, topics: Topics,
                                                       tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    env = _env(topics, "gs://models/fashion", tmp_path / "cache", PUBSUB_EMULATOR_HOST=pubsub_emulator.host,
               STORAGE_EMULATOR_HOST=dead)
    with FunctionServer("predict-cold", "predict", REPO / "functions" / "predict" / "main.py",
                        signature_type="cloudevent", env=env, log_dir=tmp_path) as server:
        request = {"request_id": "fn-cold-1", "instances": [[0] * 784]}
        assert post(server.url, push_body(request, "400"), {}) == 500
        log = server.log_path.read_text()
    assert "storage_unavailable" in log or "StorageUnavailable" in log


def test_push_subscription_delivers_a_published_request(predict_url: str, topics: Topics,
                                                        fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    ensure_subscription(topics.project, topics.requests, f"{topics.requests}-push", push_endpoint=predict_url)
    publisher = pubsub_v1.PublisherClient()
    request = {"request_id": "fn-push-1", "instances": fashion_test[0][5:7].tolist()}
    publisher.publish(f"projects/{topics.project}/topics/{topics.requests}", json.dumps(request).encode(),
                      content_type="application/json").result(timeout=30)
    [message] = pull(topics.sub(topics.results), 1, timeout=60)
    assert json.loads(message.data)["request_id"] == "fn-push-1"


def test_broker_down_answers_500_within_the_publish_timeout(topics: Topics, tiny_model: Path,
                                                             tmp_path: Path) -> None:
    # The result cannot be published: the function must fail the delivery (Pub/Sub redelivers) and
    # must do so in bounded time, even though each publish now blocks its request thread.
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    env = _env(topics, str(tiny_model), tmp_path / "cache", PUBSUB_EMULATOR_HOST=dead, PUBLISH_TIMEOUT_S="1.5")
    with FunctionServer("predict-nobroker", "predict", REPO / "functions" / "predict" / "main.py",
                        signature_type="cloudevent", env=env, log_dir=tmp_path) as server:
        request = {"request_id": "fn-nobroker-1", "instances": [[0] * 784]}
        started = time.monotonic()
        assert post(server.url, push_body(request, "500"), {}) == 500
        elapsed = time.monotonic() - started
        log = server.log_path.read_text()
    assert elapsed < 1.5 + 3.0, f"took {elapsed:.1f} s"  # publish timeout, plus model load and slack
    assert "broker_unavailable" in log or "BrokerUnavailable" in log

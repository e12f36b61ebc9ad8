"""The ingest function over real HTTP (functions-framework subprocess) publishing to the Pub/Sub emulator.

Each status code a caller can get is produced for real: 202 with messages on the topic, 400/413/415
with nothing published, 503 with the broker unreachable.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
from ingest_helpers import LIMITS, Topic, serve_ingest

from common.contract import REQUEST_ID_RE, EncodedImage, parse_request, validate
from common.settings import Settings
from devservices._proc import free_port
from pipeline.requests import array_request, load_test_set, png_bytes

SETTINGS = Settings(max_request_bytes=int(LIMITS["MAX_REQUEST_BYTES"]), max_image_side=1000,
                    max_images_per_request=128, max_image_bytes=100000)


def post(url: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(url, json=body, timeout=30, **kwargs)


def error_body(response: requests.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    validate("error", body)  # the error.v1 shape, exactly as on the errors topic
    return body


def assert_nothing_published(url: str, topic: Topic) -> None:
    """Publish a sentinel through ingest: it must be the only message on the topic."""
    rid = f"sentinel-{np.random.default_rng().integers(1 << 30)}"
    assert post(url, array_request(rid, load_test_set(1)[0])).status_code == 202
    messages = topic.pull(1)
    assert [m.attributes["request_id"] for m in messages] == [rid]


def test_health_names_model_and_topic(ingest_url: str, requests_topic: Topic) -> None:
    body = requests.get(ingest_url, timeout=10).json()
    assert body["status"] == "ok"
    assert body["model"]["name"] == "fashion-cnn"
    assert body["broker"]["type"] == "pubsub"
    assert body["broker"]["requests_topic"] == requests_topic.name


def test_one_request_is_published_as_sent(ingest_url: str, requests_topic: Topic) -> None:
    images, _ = load_test_set(1)
    response = post(ingest_url, array_request("r-one", images, top_k=3))
    assert response.status_code == 202
    assert response.json()["request_ids"] == ["r-one"]
    [message] = requests_topic.pull(1)
    request = parse_request(message.data, dict(message.attributes), SETTINGS)
    assert request.request_id == "r-one" and request.top_k == 3
    assert np.allclose(request.instances[0], images[0] / 255.0)


def test_request_id_is_assigned_when_missing(ingest_url: str, requests_topic: Topic) -> None:
    response = post(ingest_url, {"instances": [[0] * 784]})
    assert response.status_code == 202
    [rid] = response.json()["request_ids"]
    assert REQUEST_ID_RE.match(rid)
    [message] = requests_topic.pull(1)
    assert json.loads(message.data)["request_id"] == rid == message.attributes["request_id"]


def test_batch_of_100_images_becomes_100_messages(ingest_url: str, requests_topic: Topic) -> None:
    images, _ = load_test_set(100)
    batch = [array_request(f"b-{i:03d}", images[i : i + 1]) for i in range(100)]
    response = post(ingest_url, batch)
    assert response.status_code == 202
    assert response.json()["request_ids"] == [f"b-{i:03d}" for i in range(100)]
    messages = requests_topic.pull(100)
    by_id = {m.attributes["request_id"]: m for m in messages}
    assert sorted(by_id) == [f"b-{i:03d}" for i in range(100)]
    request = parse_request(by_id["b-042"].data, dict(by_id["b-042"].attributes), SETTINGS)
    assert np.allclose(request.instances[0], images[42] / 255.0)


def test_multipart_upload_is_published_as_base64(ingest_url: str, requests_topic: Topic) -> None:
    png = png_bytes(load_test_set(1, offset=7)[0][0])
    response = requests.post(ingest_url, files={"image": ("shoe.png", png, "image/png")},
                             data={"request_id": "up-1", "top_k": "2"}, timeout=30)
    assert response.status_code == 202, response.text
    [message] = requests_topic.pull(1)
    request = parse_request(message.data, dict(message.attributes), SETTINGS)
    assert request.request_id == "up-1" and request.top_k == 2
    assert request.instances == (EncodedImage(png),)


def test_raw_png_body_is_accepted(ingest_url: str, requests_topic: Topic) -> None:
    png = png_bytes(load_test_set(1)[0][0])
    response = requests.post(ingest_url, data=png, headers={"Content-Type": "image/png"},
                             params={"request_id": "raw-1"}, timeout=30)
    assert response.status_code == 202, response.text
    [message] = requests_topic.pull(1)
    assert json.loads(message.data)["instances"] == [{"b64": base64.b64encode(png).decode()}]


def test_several_files_in_one_upload_make_one_request(ingest_url: str, requests_topic: Topic) -> None:
    images, _ = load_test_set(3)
    files = [("image", (f"{i}.png", png_bytes(images[i]), "image/png")) for i in range(3)]
    response = requests.post(ingest_url, files=files, data={"request_id": "up-3"}, timeout=30)
    assert response.status_code == 202, response.text
    [message] = requests_topic.pull(1)
    request = parse_request(message.data, dict(message.attributes), SETTINGS)
    assert request.instances == tuple(EncodedImage(png_bytes(images[i])) for i in range(3))


def test_upload_with_a_bad_top_k_is_400(ingest_url: str, requests_topic: Topic) -> None:
    png = png_bytes(load_test_set(1)[0][0])
    response = requests.post(ingest_url, files={"image": ("a.png", png, "image/png")},
                             data={"request_id": "up-k", "top_k": "three"}, timeout=30)
    assert response.status_code == 400
    assert error_body(response)["request_id"] == "up-k"
    assert_nothing_published(ingest_url, requests_topic)


def test_chunked_body_over_the_limit_is_413(ingest_url: str) -> None:
    chunk = json.dumps({"request_id": "big", "instances": [[255] * 784]}).encode()

    def body() -> Any:  # a generator makes requests send Transfer-Encoding: chunked, no Content-Length
        yield b"["
        for _ in range(200):
            yield chunk + b","
        yield chunk + b"]"

    response = requests.post(ingest_url, data=body(), headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413
    assert error_body(response)["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("body", "code", "index"),
    [
        (b"{not json", "invalid_json", None),
        ({"request_id": "bad-1", "instances": [[0] * 783]}, "invalid_shape", 0),
        ({"request_id": "bad-2", "instances": [[0] * 784, {"b64": base64.b64encode(b"GIF89a....").decode()}]},
         "invalid_image", 1),
        ({"request_id": "bad-3", "instances": ["/etc/passwd"]}, "forbidden_source", 0),
        ({"request_id": "has space", "instances": [[0] * 784]}, "invalid_request", None),
    ],
)
def test_invalid_input_is_400_with_structured_error(ingest_url: str, requests_topic: Topic, body: Any,
                                                    code: str, index: int | None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = requests.post(ingest_url, data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400
    error = error_body(response)["error"]
    assert error["code"] == code
    assert error.get("index") == index
    assert_nothing_published(ingest_url, requests_topic)


def test_one_bad_request_rejects_the_whole_batch(ingest_url: str, requests_topic: Topic) -> None:
    batch = [{"request_id": f"ok-{i}", "instances": [[0] * 784]} for i in range(5)]
    batch[3]["instances"] = [[300] * 784]
    response = post(ingest_url, batch)
    assert response.status_code == 400
    body = error_body(response)
    assert body["request_id"] == "ok-3"
    assert body["error"]["code"] == "invalid_values"
    assert "request 3 of the batch" in body["error"]["message"]
    assert_nothing_published(ingest_url, requests_topic)


def test_too_large_is_413(ingest_url: str, requests_topic: Topic) -> None:
    over_body = [{"instances": [[255] * 784]}] * 200  # about 790 kB > MAX_REQUEST_BYTES
    response = post(ingest_url, over_body)
    assert response.status_code == 413
    assert error_body(response)["error"]["code"] == "payload_too_large"

    response = post(ingest_url, [{"instances": [[1] * 784]} for _ in range(129)])  # 129 > 128 images
    assert response.status_code == 413
    assert error_body(response)["error"]["code"] == "too_many_images"

    wide = np.zeros((4, 1200), dtype=np.uint8)  # a real PNG, tiny file, 1200 px > MAX_IMAGE_SIDE
    ok, buf = cv2.imencode(".png", wide)
    assert ok
    response = requests.post(ingest_url, files={"image": ("wide.png", bytes(buf), "image/png")}, timeout=30)
    assert response.status_code == 413
    assert error_body(response)["error"]["index"] == 0
    assert error_body(response)["error"]["code"] == "image_too_large"  # the code predict gives the same image
    assert_nothing_published(ingest_url, requests_topic)


def test_unsupported_content_type_is_415(ingest_url: str) -> None:
    response = requests.post(ingest_url, data="hello", headers={"Content-Type": "text/plain"}, timeout=30)
    assert response.status_code == 415
    assert error_body(response)["error"]["code"] == "unsupported_content_type"


@pytest.mark.parametrize("broker", ["pubsub", "kafka"])
def test_unreachable_broker_is_503_naming_the_unpublished_ids(broker: str, tmp_path: Path) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: a stopped emulator or broker
    env = {"BROKER": broker, "REQUESTS_TOPIC": "nowhere", "PUBSUB_EMULATOR_HOST": closed,
           "KAFKA_BOOTSTRAP_SERVERS": closed, "PUBLISH_TIMEOUT_S": "1", **LIMITS}
    server = serve_ingest(tmp_path, env)
    try:
        response = post(server.url, [{"request_id": f"lost-{i}", "instances": [[0] * 784]} for i in range(3)])
        health = requests.get(server.url, timeout=10)
    finally:
        server.stop()
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    body = response.json()
    assert body["error"]["code"] == "broker_unavailable"
    assert body["published"] == []
    assert body["failed"] == ["lost-0", "lost-1", "lost-2"]
    assert health.status_code == 200 and health.json()["broker"]["type"] == broker


def test_kafka_ingest_refuses_a_message_over_the_broker_limit_before_publishing(kafka_broker: Any,
                                                                                 tmp_path: Path) -> None:
    env = {"BROKER": "kafka", "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
           "REQUESTS_TOPIC": "ingest-kafka-limit", **LIMITS, "MAX_REQUEST_BYTES": "4000000",
           "MAX_IMAGE_BYTES": "3000000"}
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", noise)  # about 1 MB; 1.3 MB as base64 > Kafka's 1 MB default
    assert ok
    server = serve_ingest(tmp_path, env)
    try:
        small = post(server.url, [{"request_id": "k-small", "instances": [[0] * 784]}])
        big = requests.post(server.url, files={"image": ("noise.png", bytes(buf), "image/png")},
                            data={"request_id": "k-big"}, timeout=60)
    finally:
        server.stop()
    assert small.status_code == 202, small.text
    assert big.status_code == 413, big.text
    body = error_body(big)
    assert body["request_id"] == "k-big" and body["error"]["code"] == "payload_too_large"


def test_other_methods_are_405(ingest_url: str) -> None:
    response = requests.put(ingest_url, json={"instances": [[0] * 784]}, timeout=10)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert error_body(response)["error"]["code"] == "invalid_request"

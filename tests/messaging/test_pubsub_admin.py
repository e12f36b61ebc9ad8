"""Pub/Sub set-up helpers against the emulator: idempotent creation, dead-letter policy, push delivery."""

from __future__ import annotations

import base64
import http.server
import json
import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from msg_helpers import WAIT_S, collect, running

from common.errors import PublishError
from common.messaging import Message
from common.messaging.pubsub import admin
from common.messaging.pubsub.listener import PubSubListener
from common.messaging.pubsub.publisher import PubSubPublisher

pytestmark = pytest.mark.pubsub


@pytest.fixture
def names(pubsub_emulator: Any) -> Iterator[tuple[str, str]]:
    """(project, unique base name); topics and subscriptions made from it are deleted afterwards."""
    project, base = pubsub_emulator.project, f"adm-{uuid.uuid4().hex[:10]}"
    yield project, base
    for suffix in ("-sub", "-dead-sub", "-push"):
        admin.delete_subscription(project, base + suffix)
    for suffix in ("", "-dead"):
        admin.delete_topic(project, base + suffix)


def test_ensure_helpers_are_idempotent(names: tuple[str, str]) -> None:
    project, base = names
    assert admin.ensure_topic(project, base) == admin.ensure_topic(project, base) == f"projects/{project}/topics/{base}"
    first = admin.ensure_subscription(project, base, base + "-sub")
    assert admin.ensure_subscription(project, base, base + "-sub") == first


def test_publishing_to_a_missing_topic_is_a_publish_error(pubsub_emulator: Any) -> None:
    publisher = PubSubPublisher(pubsub_emulator.project, publish_timeout_s=5.0)
    with publisher, pytest.raises(PublishError):
        publisher.publish_and_wait(f"missing-{uuid.uuid4().hex[:8]}", {"x": 1})


def test_dead_letter_policy_moves_a_message_that_keeps_failing(names: tuple[str, str]) -> None:
    project, base = names
    admin.ensure_topic(project, base)
    admin.ensure_topic(project, base + "-dead")
    admin.ensure_subscription(project, base + "-dead", base + "-dead-sub")
    admin.ensure_subscription(project, base, base + "-sub", dead_letter_topic=base + "-dead",
                              max_delivery_attempts=5)
    with PubSubPublisher(project) as publisher:
        publisher.publish_and_wait(base, {"poison": True}, {"request_id": "r-9"})

    attempts: queue.Queue[int | None] = queue.Queue()

    def always_fails(message: Message) -> None:
        attempts.put(message.delivery_attempt)
        raise RuntimeError("cannot handle this one")

    dead: queue.Queue[Message] = queue.Queue()
    with running(PubSubListener(project, base + "-dead-sub"), dead.put), \
            running(PubSubListener(project, base + "-sub"), always_fails):
        (moved,) = collect(dead, 1)
    seen = []
    while not attempts.empty():
        seen.append(attempts.get())
    assert seen[:5] == [1, 2, 3, 4, 5]
    assert moved.json() == {"poison": True}
    assert moved.attributes["request_id"] == "r-9"


class _PushReceiver(http.server.BaseHTTPRequestHandler):
    bodies: queue.Queue[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.put(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_push_subscription_posts_to_the_endpoint(names: tuple[str, str]) -> None:
    project, base = names
    bodies: queue.Queue[dict[str, Any]] = queue.Queue()
    handler = type("Receiver", (_PushReceiver,), {"bodies": bodies})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        admin.ensure_topic(project, base)
        admin.ensure_subscription(project, base, base + "-push",
                                  push_endpoint=f"http://127.0.0.1:{server.server_address[1]}/push")
        pixels = bytes(range(256)) * 3 + bytes(16)
        with PubSubPublisher(project) as publisher:
            publisher.publish_and_wait(base, pixels, {"content_type": "application/x-fashion-pixels"})
        body = bodies.get(timeout=WAIT_S)
    finally:
        server.shutdown()
        server.server_close()
    assert base64.b64decode(body["message"]["data"]) == pixels
    assert body["message"]["attributes"] == {"content_type": "application/x-fashion-pixels"}
    assert body["subscription"] == f"projects/{project}/subscriptions/{base}-push"

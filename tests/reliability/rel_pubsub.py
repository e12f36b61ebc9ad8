"""Pub/Sub side of the reliability scenarios: topics, the two functions served by functions-framework
(ingest over HTTP, predict behind a push subscription), and reading answers back.

Reuses ``pipeline.servers.FunctionServer`` (the same launcher ``make run`` uses) and the messaging
admin helpers; nothing here starts a server of its own kind.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1
from rel_support import PREDICT_TESTS

from common.messaging.pubsub.admin import delete_subscription, delete_topic, ensure_subscription, ensure_topic
from common.settings import Settings
from pipeline.servers import REPO_ROOT, FunctionServer, settings_env

ALLOWED_BUCKET = "rel-user-images"
PREDICT_SOURCE = REPO_ROOT / "functions" / "predict" / "main.py"
INGEST_SOURCE = REPO_ROOT / "functions" / "ingest" / "main.py"


def predict_test_helpers() -> None:
    """Make tests/predict's helper modules (private storage emulator, upload) importable."""
    if str(PREDICT_TESTS) not in sys.path:
        sys.path.insert(0, str(PREDICT_TESTS))


@dataclass
class Topics:
    """Requests, results and errors topics of one scenario, with pull subscriptions to read answers."""

    project: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def __post_init__(self) -> None:
        self.requests = f"rel-req-{self.tag}"
        self.results = f"rel-res-{self.tag}"
        self.errors = f"rel-err-{self.tag}"
        for name in (self.requests, self.results, self.errors):
            ensure_topic(self.project, name)
        for name in (self.results, self.errors):
            ensure_subscription(self.project, name, f"{name}-pull", ack_deadline_s=30)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.publisher = pubsub_v1.PublisherClient()

    def sub_path(self, topic: str) -> str:
        return f"projects/{self.project}/subscriptions/{topic}-pull"

    def settings(self, **overrides: Any) -> Settings:
        return Settings.from_env({}, project_id=self.project, requests_topic=self.requests,
                                 results_topic=self.results, errors_topic=self.errors,
                                 allowed_buckets=(ALLOWED_BUCKET,), **overrides)

    def push_to(self, url: str, name: str = "push", **options: Any) -> str:
        return ensure_subscription(self.project, self.requests, f"{self.requests}-{name}", push_endpoint=url,
                                   **options)

    def publish(self, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish straight onto the requests topic (as gcloud or any producer would); returns the id."""
        future = self.publisher.publish(f"projects/{self.project}/topics/{self.requests}", data,
                                        **dict(attributes or {}))
        return str(future.result(timeout=30))

    def pull(self, topic: str, want: int, timeout: float = 30.0) -> list[Any]:
        """Pull (and ack) from ``topic``'s subscription until ``want`` messages or the deadline."""
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            response = self.subscriber.pull(subscription=self.sub_path(topic),
                                            max_messages=min(1000, max(1, want - len(got))), timeout=5)
            if response.received_messages:
                self.subscriber.acknowledge(subscription=self.sub_path(topic),
                                            ack_ids=[m.ack_id for m in response.received_messages])
                got.extend(m.message for m in response.received_messages)
        return got

    def drain(self, topic: str, quiet_s: float = 2.0, timeout: float = 30.0) -> list[Any]:
        """Pull everything that arrives until nothing has come for ``quiet_s`` seconds."""
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
            response = self.subscriber.pull(subscription=self.sub_path(topic), max_messages=1000,
                                            timeout=quiet_s)
            if response.received_messages:
                self.subscriber.acknowledge(subscription=self.sub_path(topic),
                                            ack_ids=[m.ack_id for m in response.received_messages])
                got.extend(m.message for m in response.received_messages)
                last = time.monotonic()
        return got

    def delete(self) -> None:
        for name in (self.results, self.errors):
            delete_subscription(self.project, f"{name}-pull")
        for suffix in ("push",):
            delete_subscription(self.project, f"{self.requests}-{suffix}")
        for name in (self.requests, self.results, self.errors):
            delete_topic(self.project, name)


def log_events(path: Path) -> list[dict[str, Any]]:
    """The Cloud Logging JSON lines of a function's log (other lines skipped)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def payloads(messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages]


def serve(kind: str, settings: Settings, work: Path, **env: str) -> FunctionServer:
    """Serve ``ingest`` or ``predict`` with ``settings`` (plus raw ``env``) and wait until it answers."""
    source = INGEST_SOURCE if kind == "ingest" else PREDICT_SOURCE
    signature = "http" if kind == "ingest" else "cloudevent"
    full_env = {**settings_env(settings), **env}
    return FunctionServer(f"{kind}-{uuid.uuid4().hex[:4]}", kind, source, signature_type=signature, env=full_env,
                          log_dir=work).start()

"""Helpers for the ingest tests: a checked requests topic and an ingest server on the emulator."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1

from common.messaging.pubsub.admin import delete_subscription, delete_topic, ensure_subscription, ensure_topic
from pipeline.servers import REPO_ROOT, FunctionServer

INGEST_SOURCE = REPO_ROOT / "functions" / "ingest" / "main.py"
# Small limits so that the 413 cases need small bodies; 128 images still lets a batch of 100 through.
LIMITS = {"MAX_REQUEST_BYTES": "500000", "MAX_IMAGE_SIDE": "1000", "MAX_IMAGES_PER_REQUEST": "128",
          "MAX_IMAGE_BYTES": "100000"}


class Topic:
    """A uniquely named requests topic with a pull subscription to read back what ingest published."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.name = f"ingest-test-{uuid.uuid4().hex[:8]}"
        self.subscription = f"{self.name}-check"
        ensure_topic(project, self.name)
        self.path = ensure_subscription(project, self.name, self.subscription)
        self.client = pubsub_v1.SubscriberClient()

    def pull(self, count: int, timeout: float = 20.0) -> list[Any]:
        """Pull (and ack) until ``count`` messages arrived or ``timeout`` passed."""
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            response = self.client.pull(subscription=self.path, max_messages=min(500, count - len(got)),
                                        timeout=5)
            if response.received_messages:
                self.client.acknowledge(subscription=self.path,
                                        ack_ids=[m.ack_id for m in response.received_messages])
                got.extend(m.message for m in response.received_messages)
        return got

    def delete(self) -> None:
        delete_subscription(self.project, self.subscription)
        delete_topic(self.project, self.name)


def serve_ingest(tmp: Path, env: dict[str, str]) -> FunctionServer:
    """Serve functions/ingest with functions-framework on a free port, configured by ``env``."""
    return FunctionServer("ingest", "ingest", INGEST_SOURCE, env=env, log_dir=tmp).start()

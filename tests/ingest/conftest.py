"""Fixtures: ingest served by functions-framework (a real HTTP server in a subprocess) on the Pub/Sub emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ingest_helpers import LIMITS, Topic, serve_ingest


@pytest.fixture(scope="module")
def requests_topic(pubsub_emulator: Any) -> Iterator[Topic]:
    topic = Topic(pubsub_emulator.project)
    yield topic
    topic.delete()


@pytest.fixture(scope="module")
def ingest_url(pubsub_emulator: Any, requests_topic: Topic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"BROKER": "pubsub", "GCP_PROJECT": pubsub_emulator.project, "REQUESTS_TOPIC": requests_topic.name,
           "PUBSUB_EMULATOR_HOST": pubsub_emulator.host, **LIMITS}
    server = serve_ingest(tmp_path_factory.mktemp("ingest"), env)
    yield server.url
    server.stop()

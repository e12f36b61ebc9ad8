"""The ``broker`` fixture: the same test bodies run against the Pub/Sub emulator and a real Kafka broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from msg_helpers import BROKERS, PUBLISHER_OPTIONS, Kit

from common.settings import Settings


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> Iterator[Kit]:
    """A :class:`Kit` for each broker; the service fixture is started only when its param runs.

    ``@publishers`` (msg_helpers) adds ``pubsub-unbatched``: Pub/Sub with ``batching=False`` publishers.
    """
    if request.param.startswith("pubsub"):
        emulator = request.getfixturevalue("pubsub_emulator")
        settings = Settings.from_env({}, broker="pubsub", project_id=emulator.project, publish_timeout_s=10.0)
    else:
        kafka = request.getfixturevalue("kafka_broker")
        settings = Settings.from_env({}, broker="kafka", kafka_bootstrap_servers=kafka.bootstrap_servers,
                                     publish_timeout_s=10.0)
    kit = Kit(settings.broker, settings, publisher_options=dict(PUBLISHER_OPTIONS.get(request.param, {})))
    try:
        yield kit
    finally:
        kit.cleanup()


@pytest.fixture
def kafka_kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    """A Kafka-only :class:`Kit`, for the consumer-group behaviour Pub/Sub does not have."""
    kafka = request.getfixturevalue("kafka_broker")
    settings = Settings.from_env({}, broker="kafka", kafka_bootstrap_servers=kafka.bootstrap_servers,
                                 publish_timeout_s=10.0)
    kit = Kit("kafka", settings)
    try:
        yield kit
    finally:
        kit.cleanup()

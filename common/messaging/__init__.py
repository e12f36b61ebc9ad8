"""One messaging API over Pub/Sub and Kafka; which broker is configuration (``BROKER``), not code.

    from common.messaging import make_publisher, make_listener

    with make_publisher(settings) as publisher:
        publisher.publish(settings.results_topic, {"request_id": "r-1", ...}).result(timeout=10)

    listener = make_listener(settings, source)  # Pub/Sub: subscription name; Kafka: topic name
    listener.listen(handle)                     # ack / commit only after handle() returned

Each broker lives in its own package with the same file names (``publisher``, ``listener``,
``admin``) and is imported only when chosen, so a Pub/Sub deployment never imports kafka-python.
"""

from __future__ import annotations

import threading
from typing import Any

from common.errors import BrokerUnavailable, PipelineError
from common.messaging.base import (
    CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    BasicListener,
    BasicPublisher,
    Message,
    MessageCallback,
    Payload,
)
from common.settings import Settings

__all__ = [
    "CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "BasicListener",
    "BasicPublisher",
    "Message",
    "MessageCallback",
    "Payload",
    "SharedPublisher",
    "make_listener",
    "make_publisher",
]


def make_publisher(settings: Settings, **options: Any) -> BasicPublisher:
    """The publisher for ``settings.broker``; ``options`` go to the broker's constructor."""
    options.setdefault("publish_timeout_s", settings.publish_timeout_s)
    if settings.broker == "kafka":
        from common.messaging.kafka.publisher import KafkaPublisher

        return KafkaPublisher(settings.kafka_bootstrap_servers, **options)
    from common.messaging.pubsub.publisher import PubSubPublisher

    return PubSubPublisher(settings.project_id, **options)


def make_listener(settings: Settings, source: str, **options: Any) -> BasicListener:
    """The listener for ``settings.broker`` reading ``source``.

    ``source`` is a subscription name for Pub/Sub and a topic name for Kafka, where the consumer
    joins the group ``settings.kafka_group_id`` unless ``group_id`` is passed in ``options``.
    """
    if settings.broker == "kafka":
        from common.messaging.kafka.listener import KafkaListener

        options.setdefault("group_id", settings.kafka_group_id)
        return KafkaListener(settings.kafka_bootstrap_servers, source, **options)
    from common.messaging.pubsub.listener import PubSubListener

    return PubSubListener(settings.project_id, source, **options)


# What "send each message at once" means to each broker's publisher.
_UNBATCHED_OPTIONS: dict[str, dict[str, Any]] = {"pubsub": {"batching": False}, "kafka": {"linger_ms": 0}}


class SharedPublisher:
    """One publisher per process, created on first use and shared by every request a function serves.

    Creating it lazily keeps cold starts short and lets a function instance start while the broker is
    down; a failed creation raises :class:`BrokerUnavailable` and is tried again on the next call.

    ``batching=False`` asks for a publisher that sends each message at once (Pub/Sub: one direct
    Publish RPC per message; Kafka: ``linger_ms=0``), for a function that publishes one outcome per
    invocation and waits for it: batching only adds its wait. Keep the default where many messages
    are published together (ingest publishes a whole request's worth at once).
    """

    def __init__(self, settings: Settings, *, batching: bool = True) -> None:
        self._settings = settings
        self._options: dict[str, Any] = {} if batching else _UNBATCHED_OPTIONS[settings.broker]
        self._publisher: BasicPublisher | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        """Whether a publisher exists yet (health checks report it)."""
        return self._publisher is not None

    def get(self) -> BasicPublisher:
        """The publisher, created under a lock by the first caller."""
        if self._publisher is None:
            with self._lock:
                if self._publisher is None:
                    try:
                        self._publisher = make_publisher(self._settings, **self._options)
                    except PipelineError:
                        raise
                    except Exception as exc:  # e.g. Kafka: no broker reachable at construction
                        raise BrokerUnavailable(
                            f"cannot connect to the {self._settings.broker} broker: {exc}"
                        ) from exc
        return self._publisher

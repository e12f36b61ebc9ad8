"""Kafka publisher: a ``KafkaProducer`` (acks=all, idempotent) behind the :class:`BasicPublisher` contract.

The ``key`` chooses the partition (same key, same partition, kept in order); attributes travel as
record headers (UTF-8 values). Every client timeout is derived from ``publish_timeout_s`` so a broker
that is down fails futures in bounded time; an unreachable broker already fails the constructor.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import Future
from typing import Any

from kafka import KafkaProducer
from kafka import errors as kerr
from kafka.record.default_records import DefaultRecordBatchBuilder

from common.errors import BrokerUnavailable, PipelineError, PublishError
from common.messaging.base import BasicPublisher, set_exception, set_result

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_SIZE = 1024 * 1024
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def to_headers(attributes: dict[str, str]) -> list[tuple[str, bytes]]:
    """Attributes as Kafka record headers."""
    return [(k, v.encode("utf-8")) for k, v in attributes.items()]


def map_error(exc: BaseException, topic: str) -> PipelineError:
    """Turn a kafka-python failure into the pipeline's error family."""
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, kerr.MessageSizeTooLargeError):
        return PublishError(f"publish to {topic!r}: {exc}", code="payload_too_large")
    if isinstance(exc, kerr.InvalidTopicError | kerr.TopicAuthorizationFailedError):
        return PublishError(f"publish to {topic!r} refused: {exc}")
    return BrokerUnavailable(f"publish to {topic!r} failed: {type(exc).__name__}: {exc}")


class KafkaPublisher(BasicPublisher):
    """Publishes to Kafka topics; the future resolves to ``"topic:partition:offset"``."""

    broker = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        publish_timeout_s: float = 10.0,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        linger_ms: int = 5,
        batch_size: int = 64 * 1024,
        compression_type: str | None = None,
        **producer_options: Any,
    ) -> None:
        super().__init__(publish_timeout_s=publish_timeout_s)
        self.bootstrap_servers = bootstrap_servers
        self.max_message_bytes = max_request_size
        timeout_ms = max(int(publish_timeout_s * 1000), 1000)
        request_timeout_ms = max(timeout_ms - linger_ms - 1, 500)
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "acks": "all",
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "compression_type": compression_type,
            "max_request_size": max_request_size,
            # Bounded everywhere: connecting, waiting for metadata or buffer space, and delivery.
            "bootstrap_timeout_ms": timeout_ms,
            "max_block_ms": timeout_ms,
            "request_timeout_ms": request_timeout_ms,
            "delivery_timeout_ms": timeout_ms,
            "reconnect_backoff_max_ms": 1000,
        }
        config.update(producer_options)
        try:
            self._producer = KafkaProducer(**config)
        except kerr.KafkaError as exc:
            self._watchdog.close()
            raise BrokerUnavailable(f"Kafka at {bootstrap_servers} did not answer: {exc}") from exc

    def _validate(self, data: bytes, attributes: dict[str, str], key: str | None) -> None:
        # A generous bound first (UTF-8 is at most 4 bytes a character, record framing and header
        # varints well under 256 + 16 a header), so the exact estimate, pure Python and a few
        # microseconds, runs only for messages that may be near the limit.
        chars = len(key or "") + sum(len(k) + len(v) for k, v in attributes.items())
        if len(data) + 4 * chars + 256 + 16 * len(attributes) <= self.max_message_bytes:
            return
        # The producer's own estimate (record batch framing included), checked before anything is queued.
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
            key.encode("utf-8") if key else None, data, to_headers(attributes)
        )
        if size > self.max_message_bytes:
            raise PublishError(
                f"message is {size} bytes with framing, over the Kafka max_request_size of "
                f"{self.max_message_bytes} bytes",
                code="payload_too_large",
            )

    def _publish(self, topic: str, data: bytes, attributes: dict[str, str], key: str | None) -> Future[str]:
        if not _TOPIC_NAME.match(topic):
            raise PublishError(f"{topic!r} is not a valid Kafka topic name ([A-Za-z0-9._-], at most 249)")
        ours: Future[str] = Future()
        try:
            theirs = self._producer.send(
                topic, value=data, key=key.encode("utf-8") if key else None, headers=to_headers(attributes)
            )
        except kerr.MessageSizeTooLargeError as exc:
            raise map_error(exc, topic) from exc
        except kerr.KafkaError as exc:  # metadata or buffer wait ran out (max_block_ms)
            set_exception(ours, map_error(exc, topic))
            return ours
        theirs.add_callback(lambda md: set_result(ours, f"{md.topic}:{md.partition}:{md.offset}"))
        theirs.add_errback(lambda exc: set_exception(ours, map_error(exc, topic)))
        return ours

    def _flush(self, timeout: float) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except kerr.KafkaTimeoutError as exc:
            raise BrokerUnavailable(f"Kafka publishes still unconfirmed after {timeout:.1f} s") from exc

    def _close(self, timeout: float) -> None:
        try:
            self._producer.close(timeout=timeout)
        except kerr.KafkaError:
            log.debug("KafkaProducer.close failed", exc_info=True)

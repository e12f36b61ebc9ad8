"""Idempotent Kafka topic set-up for local runs and tests.

Topics are created explicitly (with the partition count the consumer group needs) rather than left to
broker auto-creation, which makes one partition and races the first consumer.
"""

from __future__ import annotations

from kafka import errors as kerr
from kafka.admin import KafkaAdminClient

from common.errors import BrokerUnavailable

_TIMEOUT_MS = 30_000


def _admin(bootstrap_servers: str, timeout_ms: int) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap_servers.split(","),
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except kerr.KafkaError as exc:
        raise BrokerUnavailable(f"Kafka at {bootstrap_servers} did not answer: {exc}") from exc


def ensure_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 1,
    *,
    replication_factor: int = 1,
    configs: dict[str, str] | None = None,
    timeout_ms: int = _TIMEOUT_MS,
) -> None:
    """Create topic ``name`` unless it exists, and wait until every partition has a leader.

    An existing topic is left as it is (its partition count is not changed).
    """
    admin = _admin(bootstrap_servers, timeout_ms)
    try:
        spec: dict[str, object] = {"num_partitions": partitions, "replication_factor": replication_factor}
        if configs:
            spec["configs"] = configs
        admin.create_topics({name: spec}, timeout_ms=timeout_ms, wait_for_metadata=True)
    except kerr.TopicAlreadyExistsError:
        pass
    except kerr.KafkaError as exc:
        raise BrokerUnavailable(f"cannot create Kafka topic {name!r}: {exc}") from exc
    finally:
        admin.close()


def delete_topic(bootstrap_servers: str, name: str, *, timeout_ms: int = _TIMEOUT_MS) -> None:
    """Delete topic ``name``; a missing one is fine."""
    admin = _admin(bootstrap_servers, timeout_ms)
    try:
        admin.delete_topics([name], timeout_ms=timeout_ms)
    except kerr.UnknownTopicOrPartitionError:
        pass
    finally:
        admin.close()


def list_topics(bootstrap_servers: str, *, timeout_ms: int = _TIMEOUT_MS) -> list[str]:
    """Names of the topics on the cluster (internal ones excluded)."""
    admin = _admin(bootstrap_servers, timeout_ms)
    try:
        return sorted(t for t in admin.list_topics() if not t.startswith("__"))
    finally:
        admin.close()

"""Idempotent topic and subscription set-up for local runs and tests (Terraform does it in the cloud).

Every helper may be called again with the same arguments: an existing resource is left as it is.
"""

from __future__ import annotations

import contextlib

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2

from common.errors import BrokerUnavailable
from common.messaging.pubsub.listener import subscription_path
from common.messaging.pubsub.publisher import topic_path

_TIMEOUT_S = 30.0


def ensure_topic(project_id: str, name: str, *, client: pubsub_v1.PublisherClient | None = None) -> str:
    """Create topic ``name`` unless it exists; returns its full path."""
    client = client or pubsub_v1.PublisherClient()
    path = topic_path(project_id, name)
    try:
        client.create_topic(name=path, timeout=_TIMEOUT_S)
    except gexc.AlreadyExists:
        pass
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise BrokerUnavailable(f"cannot create topic {path}: {exc}") from exc
    return path


def ensure_subscription(
    project_id: str,
    topic: str,
    name: str,
    *,
    push_endpoint: str | None = None,
    ack_deadline_s: int = 60,
    enable_message_ordering: bool = False,
    dead_letter_topic: str | None = None,
    max_delivery_attempts: int = 5,
    min_retry_backoff_s: float | None = None,
    max_retry_backoff_s: float | None = None,
    client: pubsub_v1.SubscriberClient | None = None,
) -> str:
    """Create subscription ``name`` on ``topic`` unless it exists; returns its full path.

    ``push_endpoint`` makes it a push subscription (e.g. a local functions-framework URL);
    ``dead_letter_topic`` moves a message there after ``max_delivery_attempts`` (5-100) failures.
    """
    client = client or pubsub_v1.SubscriberClient()
    path = subscription_path(project_id, name)
    request: dict[str, object] = {
        "name": path,
        "topic": topic_path(project_id, topic),
        "ack_deadline_seconds": ack_deadline_s,
        "enable_message_ordering": enable_message_ordering,
    }
    if push_endpoint:
        request["push_config"] = {"push_endpoint": push_endpoint}
    if dead_letter_topic:
        if not 5 <= max_delivery_attempts <= 100:
            raise ValueError("max_delivery_attempts must be between 5 and 100")
        request["dead_letter_policy"] = {
            "dead_letter_topic": topic_path(project_id, dead_letter_topic),
            "max_delivery_attempts": max_delivery_attempts,
        }
    if min_retry_backoff_s is not None or max_retry_backoff_s is not None:
        request["retry_policy"] = {
            "minimum_backoff": _duration(min_retry_backoff_s if min_retry_backoff_s is not None else 10.0),
            "maximum_backoff": _duration(max_retry_backoff_s if max_retry_backoff_s is not None else 600.0),
        }
    try:
        client.create_subscription(request=request, timeout=_TIMEOUT_S)
    except gexc.AlreadyExists:
        pass
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise BrokerUnavailable(f"cannot create subscription {path}: {exc}") from exc
    return path


def delete_subscription(project_id: str, name: str, *, client: pubsub_v1.SubscriberClient | None = None) -> None:
    """Delete subscription ``name``; a missing one is fine."""
    client = client or pubsub_v1.SubscriberClient()
    with contextlib.suppress(gexc.NotFound):
        client.delete_subscription(subscription=subscription_path(project_id, name), timeout=_TIMEOUT_S)


def delete_topic(project_id: str, name: str, *, client: pubsub_v1.PublisherClient | None = None) -> None:
    """Delete topic ``name``; a missing one is fine."""
    client = client or pubsub_v1.PublisherClient()
    with contextlib.suppress(gexc.NotFound):
        client.delete_topic(topic=topic_path(project_id, name), timeout=_TIMEOUT_S)


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))

"""Pub/Sub listener: streaming pull with flow control, ack after the callback returned, nack if it raised.

Callbacks run on the subscriber's thread pool, so several run at once (``max_workers``); messages that
share an ordering key on an ordering-enabled subscription still arrive one after another, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

from common.errors import BrokerUnavailable, ConfigurationError, PipelineError
from common.messaging.base import BasicListener, Message, MessageCallback

log = logging.getLogger(__name__)

_POLL_S = 0.1


def subscription_path(project_id: str, subscription: str) -> str:
    """``projects/P/subscriptions/S`` for a short name; a full path is returned unchanged."""
    if subscription.startswith("projects/"):
        return subscription
    return f"projects/{project_id}/subscriptions/{subscription}"


def to_message(received: Any) -> Message:
    """The broker-independent view of a received ``pubsub_v1.subscriber.message.Message``."""
    return Message(
        data=bytes(received.data),
        attributes=dict(received.attributes),
        key=received.ordering_key or None,
        message_id=received.message_id,
        delivery_attempt=received.delivery_attempt,
        raw=received,
    )


class PubSubListener(BasicListener):
    """Streams one subscription into a callback with at most ``max_messages`` outstanding."""

    broker = "pubsub"

    def __init__(
        self,
        project_id: str,
        subscription: str,
        *,
        max_messages: int = 100,
        max_bytes: int = 100 * 1024 * 1024,
        max_lease_duration_s: float = 600.0,
        lease_extension_s: int = 10,
        max_workers: int | None = None,
        startup_timeout_s: float = 30.0,
        client: pubsub_v1.SubscriberClient | None = None,
    ) -> None:
        super().__init__(subscription)
        self.project_id = project_id
        self.path = subscription_path(project_id, subscription)
        self.flow_control = pubsub_v1.types.FlowControl(
            max_messages=max_messages,
            max_bytes=max_bytes,
            max_lease_duration=max_lease_duration_s,
            # Leases are renewed in steps of this many seconds while a callback runs. It is also how
            # long a message stays with a stream that died (a stopped listener, a crashed instance)
            # before it is delivered again: the client library's default is 60 s.
            max_duration_per_lease_extension=lease_extension_s,
        )
        self.max_workers = max_workers
        self.startup_timeout_s = startup_timeout_s
        self._client = client or pubsub_v1.SubscriberClient()

    def _listen(self, callback: MessageCallback, should_stop: Callable[[], bool]) -> None:
        self._check_subscription()

        def on_message(received: Any) -> None:
            try:
                callback(to_message(received))
            except Exception:
                log.warning("callback failed for message %s; nacked for redelivery", received.message_id,
                            exc_info=True)
                received.nack()
                return
            received.ack()

        scheduler = None
        if self.max_workers is not None:
            scheduler = ThreadScheduler(
                ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="pubsub-callback")
            )
        stream = self._client.subscribe(
            self.path, on_message, flow_control=self.flow_control, scheduler=scheduler,
            await_callbacks_on_shutdown=True,
        )
        # Pub/Sub keeps every message published after the subscription exists, so from here on
        # nothing published can be missed.
        self._ready.set()
        failure: BaseException | None = None
        try:
            while not should_stop() and not stream.done():
                self._stop.wait(_POLL_S)
        finally:
            stream.cancel()
            try:
                stream.result(timeout=self.startup_timeout_s)
            except (CancelledError, FutureTimeoutError):
                pass
            except Exception as exc:
                failure = exc
        if failure is not None and not should_stop():
            raise self._map_error(failure) from failure

    def _check_subscription(self) -> None:
        """Fail at start with a clear error instead of a stream that dies in the background."""
        try:
            retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=self.startup_timeout_s)
            self._client.get_subscription(subscription=self.path, retry=retry, timeout=self.startup_timeout_s)
        except gexc.NotFound as exc:
            raise ConfigurationError(f"Pub/Sub subscription {self.path} does not exist") from exc
        except gexc.GoogleAPICallError as exc:
            raise BrokerUnavailable(f"Pub/Sub did not answer for {self.path}: {exc}") from exc
        except gexc.RetryError as exc:
            raise BrokerUnavailable(f"Pub/Sub did not answer for {self.path}: {exc}") from exc

    def _map_error(self, exc: BaseException) -> PipelineError:
        if isinstance(exc, gexc.NotFound):
            return ConfigurationError(f"Pub/Sub subscription {self.path} does not exist")
        return BrokerUnavailable(f"streaming pull on {self.path} failed: {type(exc).__name__}: {exc}")

    def _close(self) -> None:
        self._client.close()

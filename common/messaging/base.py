"""The broker-independent contract: one message type, one publisher and one listener interface.

Public methods live here and wrap a few private hooks that each broker implements (FastStream style),
so encoding, validation, timeouts and the acknowledgement policy are written once:

* ``publish`` is non-blocking and returns a :class:`concurrent.futures.Future` that resolves to the
  broker's message id (Pub/Sub) or ``"topic:partition:offset"`` (Kafka). Bad input is refused at once
  with :class:`~common.errors.PublishError`; a broker that does not answer fails the future with
  :class:`~common.errors.BrokerUnavailable` within a bounded time, never hangs.
* ``listen`` hands each message to a callback and acknowledges (Pub/Sub ack, Kafka commit) only after
  the callback returned; a callback that raises gets the message again.
"""

from __future__ import annotations

import abc
import contextlib
import heapq
import itertools
import json
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from common.errors import BrokerUnavailable, PublishError

JSON_CONTENT_TYPE = "application/json"
CONTENT_TYPE = "content_type"

Payload = Mapping[str, Any] | bytes | bytearray | memoryview
MessageCallback = Callable[["Message"], None]


@dataclass(frozen=True)
class Message:
    """One received message, the same shape whichever broker carried it.

    ``key`` is the Pub/Sub ordering key or the Kafka record key; ``delivery_attempt`` is Pub/Sub's
    counter (set only when the subscription has a dead-letter policy) or, on Kafka, how many times
    this listener has handed the record to a callback. ``raw`` is the broker's own object, for the
    rare caller that needs more (publish time, partition, offset).
    """

    data: bytes
    attributes: dict[str, str]
    key: str | None
    message_id: str
    delivery_attempt: int | None = None
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def content_type(self) -> str | None:
        """The ``content_type`` attribute, if the publisher set one."""
        return self.attributes.get(CONTENT_TYPE)

    def json(self) -> Any:
        """Decode ``data`` as UTF-8 JSON; raises :class:`ValueError` when it is not."""
        return json.loads(self.data.decode("utf-8"))


def encode_payload(
    payload: Payload, attributes: Mapping[str, str] | None
) -> tuple[bytes, dict[str, str]]:
    """Turn a payload and attributes into the bytes and string map every broker carries.

    A mapping becomes compact UTF-8 JSON with ``content_type=application/json``; bytes travel as
    they are (the caller sets ``content_type``). NaN and infinity are refused: they are not JSON.
    """
    attrs = validate_attributes(attributes)
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), attrs
    if isinstance(payload, Mapping):
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PublishError(f"payload is not JSON-serialisable: {exc}") from exc
        attrs[CONTENT_TYPE] = JSON_CONTENT_TYPE
        return text.encode("utf-8"), attrs
    raise PublishError(f"payload must be a dict or bytes, got {type(payload).__name__}")


def validate_attributes(attributes: Mapping[str, str] | None) -> dict[str, str]:
    """Copy ``attributes`` into a plain dict, refusing anything but ``str -> str``."""
    if attributes is None:
        return {}
    out: dict[str, str] = {}
    for k, v in attributes.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise PublishError(f"attributes must map str to str, got {k!r}: {type(v).__name__}")
        if not k:
            raise PublishError("attribute names must not be empty")
        out[k] = v
    return out


def message_size(data: bytes, attributes: Mapping[str, str], key: str | None) -> int:
    """Bytes a message occupies on the wire before framing: data, attribute names/values, key."""
    size = len(data) + sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in attributes.items())
    return size + (len(key.encode("utf-8")) if key else 0)


def set_result(future: Future[str], value: str) -> None:
    """Resolve ``future`` unless the deadline watchdog already failed it."""
    with contextlib.suppress(InvalidStateError):
        future.set_result(value)


def set_exception(future: Future[str], exc: BaseException) -> None:
    """Fail ``future`` unless it already finished."""
    with contextlib.suppress(InvalidStateError):
        future.set_exception(exc)


def _settled(ref: weakref.ref[Future[str]]) -> bool:
    future = ref()
    return future is None or future.done()


class _DeadlineWatchdog:
    """One daemon thread that fails publish futures still pending at their deadline.

    It is the backstop behind each client's own timeouts: Pub/Sub retries ordered publishes forever,
    and a Kafka producer can wait on a dead broker; either way the caller's future ends in time.
    """

    def __init__(self, name: str) -> None:
        # Weak references: a future the caller has let go of is nobody's concern any more, and a
        # resolved one must not be kept alive (with its callbacks and what they hold) until its deadline.
        self._heap: list[tuple[float, int, weakref.ref[Future[str]], str]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def watch(self, future: Future[str], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            first = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, next(self._counter), weakref.ref(future), what))
            if first:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or _settled(self._heap[0][2])):
                    _, _, ref, what = heapq.heappop(self._heap)
                    future = ref()
                    if future is not None and not future.done():
                        set_exception(future, BrokerUnavailable(f"{what}: no answer from the broker in time"))
                wait = self._heap[0][0] - now if self._heap else None
                self._cond.wait(timeout=wait)


class BasicPublisher(abc.ABC):
    """Publishes dict or bytes payloads to named topics without blocking the caller.

    Subclasses implement ``_publish`` (hand bytes to the client, return a future), ``_flush`` and
    ``_close``, and set ``max_message_bytes``. Use as a context manager: leaving it flushes.
    """

    #: Largest message (data + attributes + key) the broker accepts; checked before sending.
    max_message_bytes: int = 1024 * 1024
    #: Broker name, used in error messages and by the factories.
    broker: str = "abstract"

    def __init__(self, *, publish_timeout_s: float = 10.0) -> None:
        if publish_timeout_s <= 0:
            raise ValueError("publish_timeout_s must be positive")
        self.publish_timeout_s = publish_timeout_s
        self._closed = False
        self._watchdog = _DeadlineWatchdog(f"{self.broker}-publish-deadlines")

    # -- public API ------------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: Payload,
        attributes: Mapping[str, str] | None = None,
        key: str | None = None,
    ) -> Future[str]:
        """Queue one message; the future resolves to its id once the broker has it.

        Raises :class:`PublishError` at once for a payload that cannot be sent as given (not JSON,
        not str->str attributes, over ``max_message_bytes`` with code ``payload_too_large``).
        """
        if self._closed:
            raise PublishError(f"{self.broker} publisher is closed")
        if not topic:
            raise PublishError("topic must not be empty")
        if key is not None and not isinstance(key, str):
            raise PublishError(f"key must be a str, got {type(key).__name__}")
        data, attrs = encode_payload(payload, attributes)
        self._validate(data, attrs, key)
        future = self._publish(topic, data, attrs, key or None)
        if not future.done():  # (unbatched publishes and refusals come back already resolved)
            # A second of grace lets the client's own, more precise error arrive first.
            self._watchdog.watch(future, self.publish_timeout_s + 1.0, f"publish to {topic!r}")
        return future

    def publish_and_wait(
        self,
        topic: str,
        payload: Payload,
        attributes: Mapping[str, str] | None = None,
        key: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Publish and block until the broker confirmed; returns the message id."""
        future = self.publish(topic, payload, attributes, key)
        wait = self.publish_timeout_s + 2.0 if timeout is None else timeout
        try:
            return future.result(timeout=wait)
        except FutureTimeoutError as exc:
            raise BrokerUnavailable(f"publish to {topic!r} not confirmed within {wait:.1f} s") from exc

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued and wait for the broker's answers (bounded by ``timeout``)."""
        self._flush(self.publish_timeout_s + 2.0 if timeout is None else timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush pending publishes, then release the client. Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            try:
                self._close(self.publish_timeout_s if timeout is None else timeout)
            finally:
                self._watchdog.close()

    def __enter__(self) -> BasicPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- hooks -----------------------------------------------------------------------------------

    def _validate(self, data: bytes, attributes: dict[str, str], key: str | None) -> None:
        """Refuse what the broker would refuse; override to add broker-specific limits."""
        size = message_size(data, attributes, key)
        if size > self.max_message_bytes:
            raise PublishError(
                f"message is {size} bytes, over the {self.broker} limit of {self.max_message_bytes} bytes",
                code="payload_too_large",
            )

    @abc.abstractmethod
    def _publish(self, topic: str, data: bytes, attributes: dict[str, str], key: str | None) -> Future[str]:
        """Hand one validated message to the client; never block for long, never raise for I/O."""

    @abc.abstractmethod
    def _flush(self, timeout: float) -> None:
        """Wait until queued messages are sent or failed, at most ``timeout`` seconds."""

    @abc.abstractmethod
    def _close(self, timeout: float) -> None:
        """Release the client (after a flush)."""


class BasicListener(abc.ABC):
    """Delivers messages from one source (subscription or topic) to a callback, ack after success.

    ``listen`` blocks until :meth:`stop` is called from another thread, ``stop_event`` is set, or the
    broker fails for good (raised as a :class:`~common.errors.PipelineError`).
    """

    broker: str = "abstract"

    def __init__(self, source: str) -> None:
        if not source:
            raise ValueError("source must not be empty")
        self.source = source
        self._stop = threading.Event()
        self._ready = threading.Event()

    def listen(self, callback: MessageCallback, *, stop_event: threading.Event | None = None) -> None:
        """Call ``callback`` for each message; ack only after it returned, redeliver if it raised."""
        self._ready.clear()
        try:
            self._listen(callback, self._should_stop(stop_event))
        finally:
            # A stop() that came before or during this call ends it; the next listen() starts afresh.
            self._stop.clear()
            self._ready.clear()

    def stop(self) -> None:
        """Make :meth:`listen` return (a call already running, or the next one); safe from any thread."""
        self._stop.set()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until messages can flow (stream open / partitions assigned). True when ready."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def close(self) -> None:
        """Stop listening and release the client."""
        self.stop()
        self._close()

    def __enter__(self) -> BasicListener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _should_stop(self, stop_event: threading.Event | None) -> Callable[[], bool]:
        if stop_event is None:
            return self._stop.is_set
        return lambda: self._stop.is_set() or stop_event.is_set()

    # -- hooks -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def _listen(self, callback: MessageCallback, should_stop: Callable[[], bool]) -> None:
        """Run the delivery loop until ``should_stop()``; set ``self._ready`` once messages can flow."""

    def _close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release client resources; the default has none."""


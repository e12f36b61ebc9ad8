"""The predict step, broker-agnostic: envelopes in, results and structured errors out.

Both the Pub/Sub Cloud Function (``functions/predict/main.py``) and the Kafka adapter
(``common.kafka_adapter``) run exactly this code. They differ only in how events arrive (one
CloudEvent per call, or a micro-batch of Kafka records wrapped in the same CloudEvent shape) and
in which publisher sends the outcomes.

Steps, each a plain function or method so it can be tested alone:

1. :func:`envelope_from_event`: a Pub/Sub ``messagePublished`` CloudEvent -> :class:`Envelope`
   (body bytes, attributes, message id). Pure.
2. :meth:`PredictHandler.handle` (many envelopes): parse each with the contract, fetch and decode
   its images, run **one** model call for every image of every request, then build one result per
   request. A request that cannot succeed becomes an error :class:`Outcome` and does not disturb
   the others.
3. :func:`publish_outcomes`: results to the results topic, errors to the errors topic, then wait
   for every broker acknowledgement; a publish that fails raises
   :class:`~common.errors.BrokerUnavailable` so the caller does not acknowledge the input. The
   Kafka adapter uses its two halves, :func:`send_outcomes` and :func:`acknowledged`, so that it
   does not block while the broker answers.

Failure policy: permanent errors (invalid request, image, model integrity) are answered on the
errors topic and the input is acknowledged, so a poison message is never retried. Transient
errors (storage or broker unreachable) propagate, and Pub/Sub or the Kafka loop delivers the
input again. Results are deterministic (same model, same input, same scores at any batch size),
so a redelivered request publishes the same prediction under the same request id.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.contract import REQUEST_ID_RE, PredictRequest, make_error, make_result, parse_request
from common.errors import (
    BrokerUnavailable,
    InvalidRequest,
    PermanentError,
    PipelineError,
    PublishError,
    TransientError,
)
from common.predictor import FMPredictor, Prediction
from common.settings import Settings

log = logging.getLogger("predict")

PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
MAX_IMAGES_PER_MODEL_CALL = 1024  # bounds memory when a Kafka batch holds many large requests


# ---------------------------------------------------------------------------------------------
# Envelopes.


@dataclass(frozen=True)
class Envelope:
    """One incoming message, whatever carried it: body, attributes (or headers) and an id."""

    data: bytes
    attributes: dict[str, str]
    message_id: str
    delivery_attempt: int | None = None


def _field(event: Any, name: str) -> Any:
    """A CloudEvent attribute from a ``cloudevents`` object or a structured-mode dict."""
    if isinstance(event, Mapping):
        return event.get(name)
    try:
        return event[name]
    except (KeyError, TypeError):
        return None


def envelope_from_event(event: Any) -> Envelope:
    """The Pub/Sub message inside a ``messagePublished`` CloudEvent (object or dict).

    Raises :class:`~common.errors.InvalidRequest` when the event does not carry a Pub/Sub message
    (it cannot become valid by retrying).
    """
    data = event.get("data") if isinstance(event, Mapping) else getattr(event, "data", None)
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError:
            data = None
    message = data.get("message") if isinstance(data, Mapping) else None
    event_id = str(_field(event, "id") or "")
    if not isinstance(message, Mapping):
        raise InvalidRequest(f"event {event_id or '?'} carries no Pub/Sub message")
    message_id = str(message.get("messageId") or message.get("message_id") or event_id)
    try:
        body = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidRequest(f"message {message_id}: data is not base64") from exc
    raw_attributes = message.get("attributes") or {}
    if not isinstance(raw_attributes, Mapping):
        raise InvalidRequest(f"message {message_id}: attributes are not an object")
    attributes = {str(k): str(v) for k, v in raw_attributes.items()}
    attempt = data.get("deliveryAttempt") if isinstance(data, Mapping) else None
    return Envelope(body, attributes, message_id, int(attempt) if isinstance(attempt, int) else None)


def event_from_envelope(envelope: Envelope, source: str) -> dict[str, Any]:
    """The structured-mode CloudEvent Pub/Sub would deliver for ``envelope`` (used for Kafka records)."""
    message: dict[str, Any] = {
        "data": base64.b64encode(envelope.data).decode("ascii"),
        "attributes": dict(envelope.attributes),
        "messageId": envelope.message_id,
    }
    data: dict[str, Any] = {"message": message, "subscription": source}
    if envelope.delivery_attempt is not None:
        data["deliveryAttempt"] = envelope.delivery_attempt
    return {"specversion": "1.0", "type": PUBSUB_EVENT_TYPE, "source": source, "id": envelope.message_id,
            "datacontenttype": "application/json", "data": data}


# ---------------------------------------------------------------------------------------------
# Outcomes.


@dataclass(frozen=True)
class Outcome:
    """What one input message produced: a result or an error payload, and where it goes."""

    kind: str  # "result" or "error"
    payload: dict[str, Any]
    request_id: str | None
    message_id: str
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "result"


def _error_outcome(exc: PipelineError, envelope: Envelope, request_id: str | None = None) -> Outcome:
    request_id = request_id or exc.request_id or _attribute_id(envelope)
    payload = make_error(exc, request_id=request_id, message_id=envelope.message_id)
    return Outcome("error", payload, request_id, envelope.message_id, exc.code)


def _attribute_id(envelope: Envelope) -> str | None:
    value = envelope.attributes.get("request_id")
    return value if value and REQUEST_ID_RE.match(value) else None


# ---------------------------------------------------------------------------------------------
# The handler.


_NO_PIXELS = np.zeros((0, 28, 28), np.uint8)


@dataclass
class _Pending:
    """A request waiting for the model: its ``n x 28 x 28`` uint8 pixels and, later, its predictions."""

    envelope: Envelope
    request: PredictRequest
    pixels: np.ndarray
    started: float
    predictions: list[Prediction] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    """A batch between :meth:`PredictHandler.prepare` and :meth:`PredictHandler.finish`: inputs
    already answered (rejected) and inputs waiting for the model, both keyed by input position."""

    outcomes: dict[int, Outcome]
    pending: dict[int, _Pending]

    @property
    def count(self) -> int:
        """How many inputs the batch had: each one is either answered already or pending."""
        return len(self.outcomes) + len(self.pending)


class PredictHandler:
    """Turns envelopes into outcomes with one model call per batch; holds the lazily loaded model."""

    def __init__(self, settings: Settings, predictor: FMPredictor | None = None) -> None:
        self.settings = settings
        self.predictor = predictor or FMPredictor(settings=settings)

    def handle_events(self, events: Sequence[Any]) -> list[Outcome]:
        """Outcomes for CloudEvents, in order; a malformed event becomes an error outcome."""
        return self.finish(self.prepare_events(events))

    def handle(self, envelopes: Sequence[Envelope]) -> list[Outcome]:
        """Outcomes for envelopes, in order. Raises TransientError when a retry can help."""
        return self.finish(self.prepare(envelopes))

    def prepare_events(self, events: Sequence[Any]) -> Prepared:
        """:meth:`prepare` for CloudEvents: a malformed event is answered with an error outcome."""
        envelopes: list[Envelope] = []
        rejected: dict[int, Outcome] = {}
        for i, event in enumerate(events):
            try:
                envelopes.append(envelope_from_event(event))
            except PermanentError as exc:
                message_id = str(_field(event, "id") or f"event-{i}")
                log.warning("malformed event", extra={"json_fields": {"message_id": message_id, "code": exc.code}})
                rejected[i] = _error_outcome(exc, Envelope(b"", {}, message_id))
        prepared = self.prepare(envelopes)
        if not rejected:
            return prepared
        position = [i for i in range(len(events)) if i not in rejected]  # envelope j came from event position[j]
        return Prepared({**rejected, **{position[j]: o for j, o in prepared.outcomes.items()}},
                        {position[j]: p for j, p in prepared.pending.items()})

    def prepare(self, envelopes: Sequence[Envelope]) -> Prepared:
        """Parse and decode every envelope: everything before the model call.

        Split from :meth:`finish` so that the Kafka adapter can prepare the next batch while the
        model runs on this one. Raises TransientError when a retry can help (e.g. storage down).
        """
        outcomes: dict[int, Outcome] = {}
        pending: dict[int, _Pending] = {}
        raw: list[int] = []  # requests of raw pixel arrays, already checked by the contract
        for i, envelope in enumerate(envelopes):
            started = time.perf_counter()
            request: PredictRequest | None = None
            try:
                request = parse_request(envelope.data, envelope.attributes, self.settings)
                if all(isinstance(x, np.ndarray) for x in request.instances):
                    raw.append(i)
                    pending[i] = _Pending(envelope, request, _NO_PIXELS, started)
                else:
                    pending[i] = _Pending(envelope, request, self.predictor.to_pixels(list(request.instances)),
                                          started)
            except TransientError:
                raise
            except Exception as exc:
                outcomes[i] = self._failed(exc, envelope, request)
        if raw:
            self._scale_together([pending[i] for i in raw])
        return Prepared(outcomes, pending)

    def _scale_together(self, batch: list[_Pending]) -> None:
        """Scale the pixel arrays of many requests in one numpy pass (per request it was a third of
        the Kafka adapter's parsing time). The contract has checked them, so this cannot fail."""
        arrays = [x for p in batch for x in p.request.instances if isinstance(x, np.ndarray)]
        pixels = self.predictor.scale_pixels(np.stack(arrays))
        offset = 0
        for p in batch:
            p.pixels = pixels[offset : offset + len(p.request.instances)]
            offset += len(p.request.instances)

    def _failed(self, exc: Exception, envelope: Envelope, request: PredictRequest | None) -> Outcome:
        """The error outcome for a request that cannot succeed (retrying would not help)."""
        if isinstance(exc, PipelineError):
            return self._rejected(exc, envelope, request)
        # A bug hit by this input: answer it rather than retry forever.
        log.error("unexpected error on message %s", envelope.message_id, exc_info=exc)
        return self._rejected(PipelineError(f"internal error: {type(exc).__name__}"), envelope, request)

    def finish(self, prepared: Prepared) -> list[Outcome]:
        """One model call for every image still pending, then one outcome per input, in order."""
        outcomes, pending = dict(prepared.outcomes), dict(prepared.pending)
        if pending:
            try:
                self._predict(list(pending.values()))
            except TransientError:
                raise
            except PipelineError as exc:  # e.g. model_integrity: every request of the batch gets it
                for i, p in pending.items():
                    outcomes[i] = self._rejected(exc, p.envelope, p.request)
                pending = {}
        for i, p in pending.items():
            outcomes[i] = self._answered(p)
        return [outcomes[i] for i in range(prepared.count)]

    def _predict(self, batch: list[_Pending]) -> None:
        """One model call (chunked at MAX_IMAGES_PER_MODEL_CALL) for all images of all requests."""
        pixels = np.concatenate([p.pixels for p in batch])
        top_k = max(p.request.top_k for p in batch)
        predictions: list[Prediction] = []
        for start in range(0, len(pixels), MAX_IMAGES_PER_MODEL_CALL):
            predictions.extend(self.predictor.predict_pixels(pixels[start : start + MAX_IMAGES_PER_MODEL_CALL],
                                                             top_k))
        offset = 0
        for p in batch:
            n = len(p.pixels)
            # The top-k of a larger k, cut to the request's k, is the request's own top-k.
            p.predictions = [{**pred, "top_k": pred["top_k"][: p.request.top_k]}
                             for pred in predictions[offset : offset + n]]
            offset += n

    def _answered(self, p: _Pending) -> Outcome:
        manifest = self.predictor.load().manifest
        result = make_result(p.request.request_id, self.settings.model_name, manifest.version, p.predictions,
                             p.started)
        log.info("predicted", extra={"json_fields": {
            "request_id": p.request.request_id, "message_id": p.envelope.message_id,
            "model_version": manifest.version, "latency_ms": result["latency_ms"], "images": len(p.predictions),
            "delivery_attempt": p.envelope.delivery_attempt}})
        return Outcome("result", result, p.request.request_id, p.envelope.message_id)

    def _rejected(self, exc: PipelineError, envelope: Envelope, request: PredictRequest | None) -> Outcome:
        outcome = _error_outcome(exc, envelope, request.request_id if request else None)
        log.warning("rejected", extra={"json_fields": {
            "request_id": outcome.request_id, "message_id": envelope.message_id, "code": exc.code,
            "error": exc.message[:300], "index": exc.index}})
        return outcome


# ---------------------------------------------------------------------------------------------
# Publishing.


def publish_outcomes(publisher: Any, outcomes: Sequence[Outcome], settings: Settings) -> list[str]:
    """Publish every outcome to its topic and wait for all acknowledgements; return message ids.

    Raises :class:`BrokerUnavailable` if any publish fails or is not acknowledged in time: the
    caller must then not acknowledge its input.
    """
    acks = acknowledged(send_outcomes(publisher, outcomes, settings))
    try:
        return acks.result(timeout=settings.publish_timeout_s + 2.0)
    except FutureTimeout as exc:
        raise BrokerUnavailable(f"publishes of {len(outcomes)} outcomes not acknowledged in time") from exc


def send_outcomes(publisher: Any, outcomes: Sequence[Outcome], settings: Settings) -> list[Future[str]]:
    """Queue every outcome on its topic (results or errors) without waiting; one future per message.

    Results are keyed by request id (Kafka partition / Pub/Sub ordering key), so the answers for
    one request stay in order. A result too large for the broker is answered with a
    ``payload_too_large`` error instead.
    """
    futures: list[Future[str]] = []
    for outcome in outcomes:
        topic = settings.results_topic if outcome.ok else settings.errors_topic
        attributes = {"request_id": outcome.request_id} if outcome.request_id else {}
        if outcome.code:
            attributes["error_code"] = outcome.code
        try:
            futures.append(publisher.publish(topic, outcome.payload, attributes, key=outcome.request_id))
        except PublishError as exc:
            if not outcome.ok:
                raise BrokerUnavailable(f"cannot publish error for {outcome.message_id}: {exc.message}") from exc
            error = PublishError(f"result is too large to publish: {exc.message}", code="payload_too_large")
            payload = make_error(error, request_id=outcome.request_id, message_id=outcome.message_id)
            futures.append(publisher.publish(settings.errors_topic, payload, attributes, key=outcome.request_id))
    return futures


def acknowledged(futures: Sequence[Future[str]]) -> Future[list[str]]:
    """One future for many publishes: the message ids once every one is acknowledged, or the failure.

    It does not block, so the Kafka adapter can run the next model call while the broker answers.
    A failure that is not already a pipeline error becomes :class:`BrokerUnavailable`. Every
    publisher future resolves within its publish timeout (the publishers' watchdog), so this does too.
    """
    combined: Future[list[str]] = Future()
    remaining = len(futures)
    lock = threading.Lock()

    def resolve() -> None:
        for future in futures:
            failure = future.exception()
            if failure is not None:
                combined.set_exception(failure if isinstance(failure, PipelineError)
                                       else BrokerUnavailable(f"publish failed: {failure}"))
                return
        combined.set_result([future.result() for future in futures])

    def one_done(_: Future[str]) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            last = remaining == 0
        if last:
            resolve()

    if not futures:
        combined.set_result([])
    for future in futures:
        future.add_done_callback(one_done)
    return combined


# ---------------------------------------------------------------------------------------------
# Structured logs.


class CloudLoggingFormatter(logging.Formatter):
    """One JSON object per line in the shape Cloud Logging parses from stdout (``severity``,
    ``message``, ``time``, extra fields at the top level), so logs are searchable by request id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname if record.levelname != "WARN" else "WARNING",
            "message": record.getMessage(),
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "logger": record.name,
        }
        fields = getattr(record, "json_fields", None)
        if isinstance(fields, Mapping):
            entry.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


CloudLoggingFormatter.converter = time.gmtime


def configure_logging(level: str = "INFO") -> None:
    """Send this process's logs to stdout as Cloud Logging JSON lines (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler.formatter, CloudLoggingFormatter):
            break
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(CloudLoggingFormatter())
        root.addHandler(handler)
    root.setLevel(level.upper())

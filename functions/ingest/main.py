"""HTTP ingest Cloud Function: validate at the edge, publish to the requests topic, answer 202.

``POST``: a JSON request or a JSON list of requests, a multipart upload of image files, or a raw
PNG/JPEG body (the forms are described in ``ingest_edge``). Each request becomes one message on
``REQUESTS_TOPIC``; the answer waits for the broker's confirmation of every message.

* 202 ``{"request_ids": [...], "message_ids": [...], "topic": ...}``: all published.
* 400 / 413 / 415: nothing published; the body is the error.v1 object (code, message, index,
  request_id) that the errors topic would carry.
* 503: the broker did not confirm. The body is the error.v1 object plus ``published`` and
  ``failed`` id lists, so a caller can resend exactly the failed ones (ids are idempotency keys).

``GET`` answers a health document with the model and topic configuration.

The publisher (Pub/Sub or Kafka, by ``BROKER``) is created once per instance, on first use, and
batches the messages of concurrent requests.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any

import flask
import functions_framework
from ingest_edge import (
    IMAGE_CONTENT_TYPES,
    MULTIPART_CONTENT_TYPE,
    Accepted,
    http_status,
    media_type,
    parse_json_body,
    parse_upload,
    unsupported,
)

from common.contract import make_error
from common.errors import BrokerUnavailable, InvalidRequest, PayloadTooLarge, PipelineError
from common.messaging import SharedPublisher
from common.messaging.base import message_size
from common.predict_handler import configure_logging
from common.settings import Settings

# Read at import so that wrong configuration fails the instance at start-up, not the first request.
SETTINGS = Settings.from_env()
configure_logging(SETTINGS.log_level)  # Cloud Logging JSON lines, as predict writes them
log = logging.getLogger("ingest")

PUBLISHER = SharedPublisher(SETTINGS)  # created on first use, shared by every request of this instance

Response = tuple[str, int, dict[str, str]]


@functions_framework.http
def ingest(request: flask.Request) -> Response:
    """Entry point (``--target ingest``)."""
    if request.method in ("GET", "HEAD"):
        return _json(health(), 200)
    if request.method != "POST":
        return _json(make_error(InvalidRequest(f"{request.method} is not supported: POST to submit, GET for health")),
                     405, {"Allow": "GET, HEAD, POST"})
    try:
        accepted = read_requests(request)
    except PipelineError as exc:
        log.info("rejected: %s", exc.message,
                 extra={"json_fields": {"request_id": exc.request_id, "error_code": exc.code}})
        return _json(make_error(exc), http_status(exc))
    return publish_all(accepted)


def read_requests(request: flask.Request) -> list[Accepted]:
    """Bound the body, pick the parser by Content-Type, and validate everything."""
    limit = SETTINGS.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body is {request.content_length} bytes; the limit is {limit} (MAX_REQUEST_BYTES)")
    kind = media_type(request.content_type)
    if kind == "application/json" or kind.endswith("+json"):
        return parse_json_body(_read_body(request, limit), SETTINGS)
    if kind == MULTIPART_CONTENT_TYPE:
        return parse_upload(*_read_multipart(request, limit), SETTINGS)
    if kind in IMAGE_CONTENT_TYPES:
        body = _read_body(request, limit)
        return parse_upload([("body", body)], request.args.to_dict(), SETTINGS)
    raise unsupported(request.content_type)


def _read_body(request: flask.Request, limit: int) -> bytes:
    # A chunked body has no Content-Length: read one byte past the limit to detect the overflow.
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"body is over the limit of {limit} bytes (MAX_REQUEST_BYTES)")
    return data


def _read_multipart(request: flask.Request, limit: int) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    request.max_content_length = limit
    request.max_form_parts = SETTINGS.max_images_per_request + 8
    try:
        files = [(storage.filename or field, storage.read(SETTINGS.max_image_bytes + 1))
                 for field, storage in request.files.items(multi=True)]
        form = {key: value for key, value in request.form.items() if key in ("request_id", "top_k", "model")}
    except Exception as exc:  # werkzeug: RequestEntityTooLarge, malformed multipart
        if getattr(exc, "code", None) == 413:
            raise PayloadTooLarge(f"upload is over the limit of {limit} bytes (MAX_REQUEST_BYTES)") from exc
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    return files, form


def publish_all(accepted: list[Accepted]) -> Response:
    """Publish every request, wait for every confirmation, and say exactly which ones made it."""
    ids = [item.request_id for item in accepted]
    try:
        publisher = PUBLISHER.get()
    except PipelineError as exc:
        return _broker_down(exc, published=[], failed=ids)
    for item in accepted:
        # All or nothing: refuse the call before publishing any of it if one message is over the
        # broker's own limit (Kafka's default is 1 MB, well under MAX_REQUEST_BYTES).
        size = message_size(item.data, item.attributes, None)
        if size > publisher.max_message_bytes:
            too_large = PayloadTooLarge(
                f"request {item.request_id} is {size} bytes as a message, over the {publisher.broker} limit of "
                f"{publisher.max_message_bytes} bytes: send fewer or smaller images per request",
                request_id=item.request_id,
            )
            return _json(make_error(too_large), http_status(too_large))
    futures: list[tuple[Accepted, Future[str]]] = []
    failures: dict[str, PipelineError] = {}
    for item in accepted:
        try:
            futures.append((item, publisher.publish(SETTINGS.requests_topic, item.data, item.attributes)))
        except PipelineError as exc:
            failures[item.request_id] = exc
    wait_futures([f for _, f in futures], timeout=SETTINGS.publish_timeout_s + 2.0)
    message_ids: list[str] = []
    published: list[str] = []
    for item, future in futures:
        if not future.done():
            failures[item.request_id] = BrokerUnavailable("no confirmation from the broker in time")
            continue
        error = future.exception()
        if error is None:
            published.append(item.request_id)
            message_ids.append(future.result())
        else:
            failures[item.request_id] = (error if isinstance(error, PipelineError)
                                         else BrokerUnavailable(str(error)))
    if failures:
        first = next(iter(failures.values()))
        failed = [rid for rid in ids if rid in failures]
        return _broker_down(first, published=published, failed=failed)
    log.info("published %d request(s)", len(published),
             extra={"json_fields": {"request_ids": published[:20], "topic": SETTINGS.requests_topic}})
    return _json({"request_ids": published, "message_ids": message_ids, "topic": SETTINGS.requests_topic}, 202)


def _broker_down(exc: PipelineError, *, published: list[str], failed: list[str]) -> Response:
    log.warning("publish failed for %d request(s) (%d published): %s", len(failed), len(published), exc.message,
                extra={"json_fields": {"failed": failed[:20], "published": published[:20]}})
    error = exc if isinstance(exc, BrokerUnavailable) else BrokerUnavailable(exc.message)
    body = make_error(BrokerUnavailable(
        f"{len(failed)} of {len(failed) + len(published)} request(s) not published: {error.message}. "
        "Resend the ids in 'failed'; those in 'published' are on their way.",
        request_id=failed[0] if len(failed) == 1 and not published else None,
    ))
    body["published"] = published
    body["failed"] = failed
    return _json(body, 503, {"Retry-After": "5"})


def health() -> dict[str, Any]:
    """What this instance serves and where it publishes (no secrets: only names and limits)."""
    broker: dict[str, Any] = {"type": SETTINGS.broker, "requests_topic": SETTINGS.requests_topic,
                              "results_topic": SETTINGS.results_topic, "errors_topic": SETTINGS.errors_topic}
    if SETTINGS.broker == "pubsub":
        broker["project_id"] = SETTINGS.project_id
    else:
        broker["bootstrap_servers"] = SETTINGS.kafka_bootstrap_servers
    return {
        "status": "ok",
        "function": "ingest",
        "model": {"name": SETTINGS.model_name, "uri": SETTINGS.model_uri, "runtime": SETTINGS.model_runtime},
        "broker": broker,
        "publisher_started": PUBLISHER.started,
        "limits": {
            "max_request_bytes": SETTINGS.max_request_bytes,
            "max_images_per_request": SETTINGS.max_images_per_request,
            "max_image_bytes": SETTINGS.max_image_bytes,
            "max_image_side": SETTINGS.max_image_side,
            "max_top_k": SETTINGS.max_top_k,
        },
    }


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return json.dumps(body), status, {"Content-Type": "application/json", **(headers or {})}

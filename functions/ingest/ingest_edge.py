"""The ingest function's edge checks: HTTP body -> validated, ready-to-publish requests.

Pure functions, no Flask and no broker, so every rule is testable alone and the HTTP layer in
``main.py`` stays a thin shell. Everything the predict side would reject is rejected here first, so
a caller learns about a bad image from the HTTP answer rather than, later, from the errors topic:

* the contract's own validation (:func:`common.contract.request_from_json`: schema, id, limits,
  pixel values, base64, ``gs://`` allow-list),
* encoded images: container and dimensions read from the header only (no pixel is decoded here;
  predict decodes each image once, with the same bounds),
* the size of the message that will be published, and the total image count of one HTTP call.

The accepted body forms (see docs/LOCAL.md):

* ``application/json``: one request object, or a JSON list of request objects (a batch). Each
  request becomes one message; ``request_id`` is assigned when missing.
* ``multipart/form-data``: one or more image files (any field name, ``image`` by convention), plus
  optional form fields ``request_id``, ``top_k``, ``model``. All files of one upload form one request.
* ``image/png`` / ``image/jpeg``: the raw file as the body; ``request_id`` and ``top_k`` as query
  parameters.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.contract import JSON_CONTENT_TYPE, EncodedImage, PredictRequest, decode_json, request_from_json
from common.errors import (
    ForbiddenSource,
    InvalidImage,
    InvalidRequest,
    PayloadTooLarge,
    PipelineError,
    UnknownModel,
)
from common.imaging import image_size
from common.settings import Settings

IMAGE_CONTENT_TYPES = ("image/png", "image/jpeg")
MULTIPART_CONTENT_TYPE = "multipart/form-data"

# Error code -> HTTP status. Anything "too big" is 413 (the caller must send less); every other
# permanent error is 400; the broker's absence is 503 (retry later).
_STATUS_BY_CODE = {
    "payload_too_large": 413,
    "image_too_large": 413,
    "too_many_images": 413,
    "unsupported_content_type": 415,
    "broker_unavailable": 503,
}


@dataclass(frozen=True)
class Accepted:
    """One validated request, encoded exactly as it will be published."""

    request_id: str
    data: bytes
    images: int

    @property
    def attributes(self) -> dict[str, str]:
        """Message attributes: the content type the contract dispatches on, and the id for logs."""
        return {"content_type": JSON_CONTENT_TYPE, "request_id": self.request_id}


def http_status(error: PipelineError) -> int:
    """The HTTP status that answers ``error``."""
    if error.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[error.code]
    if isinstance(error, InvalidRequest | InvalidImage | ForbiddenSource | UnknownModel | PayloadTooLarge):
        return 413 if isinstance(error, PayloadTooLarge) else 400
    return 500


def new_request_id() -> str:
    """A fresh request id, for callers that sent none (matches the contract's id pattern)."""
    return f"ing-{uuid.uuid4().hex}"


def media_type(content_type: str | None) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def unsupported(content_type: str | None) -> InvalidRequest:
    """The 415 error for a body type ingest does not take."""
    shown = media_type(content_type) or "none"
    return InvalidRequest(
        f"Content-Type {shown[:80]!r} is not supported: send application/json (one request or a list), "
        "multipart/form-data image uploads (curl -F image=@shoe.jpg), or a raw image/png or image/jpeg body",
        code="unsupported_content_type",
    )


# --- body forms -----------------------------------------------------------------------------------


def parse_json_body(data: bytes, settings: Settings) -> list[Accepted]:
    """A JSON body: one request object or a list of them."""
    obj = decode_json(data)
    if isinstance(obj, list):
        if not obj:
            raise InvalidRequest("the batch is an empty list: send at least one request", code="empty_batch")
        return accept_batch(obj, settings)
    return accept_batch([obj], settings)


def parse_upload(
    files: Sequence[tuple[str, bytes]], form: Mapping[str, str], settings: Settings
) -> list[Accepted]:
    """Image files of one multipart upload (or one raw image body) -> one request.

    ``files`` holds ``(filename, content)`` pairs; ``form`` the optional ``request_id``,
    ``top_k`` and ``model`` fields.
    """
    if not files:
        raise InvalidRequest(
            "the upload has no file: send at least one, e.g. curl -F image=@shoe.jpg", code="empty_batch"
        )
    for index, (name, content) in enumerate(files):
        if len(content) > settings.max_image_bytes:
            raise PayloadTooLarge(
                f"instance {index} ({name[:80]}): {len(content)} bytes, over MAX_IMAGE_BYTES "
                f"({settings.max_image_bytes})",
                index=index,
                request_id=form.get("request_id"),
            )
    obj: dict[str, Any] = {"instances": [{"b64": base64.b64encode(content).decode("ascii")} for _, content in files]}
    if form.get("request_id"):
        obj["request_id"] = form["request_id"]
    if form.get("model"):
        obj["model"] = form["model"]
    if form.get("top_k"):
        try:
            obj["top_k"] = int(form["top_k"])
        except ValueError as exc:
            raise InvalidRequest(f"top_k must be an integer, got {form['top_k'][:20]!r}",
                                 request_id=form.get("request_id")) from exc
    return accept_batch([obj], settings)


# --- validation -----------------------------------------------------------------------------------


def accept_batch(requests: Sequence[Any], settings: Settings) -> list[Accepted]:
    """Validate every request of a batch before anything is published: all or nothing."""
    batch = len(requests) > 1
    accepted: list[Accepted] = []
    seen: set[str] = set()
    total_images = 0
    for position, obj in enumerate(requests):
        try:
            item = accept_one(obj, settings)
        except PipelineError as exc:
            if not batch:
                raise
            raise _in_batch(exc, position) from exc
        if item.request_id in seen:
            raise InvalidRequest(
                f"request {position} of the batch repeats request_id {item.request_id!r}; ids are idempotency keys",
                request_id=item.request_id,
            )
        seen.add(item.request_id)
        total_images += item.images
        if total_images > settings.max_images_per_request:
            raise InvalidRequest(
                f"the batch holds more than {settings.max_images_per_request} images (MAX_IMAGES_PER_REQUEST); "
                "split it into several calls",
                code="too_many_images",
            )
        accepted.append(item)
    return accepted


def accept_one(obj: Any, settings: Settings) -> Accepted:
    """Validate one request object, assign its id if missing, and encode the message to publish."""
    if isinstance(obj, dict) and "request_id" not in obj:
        obj = {**obj, "request_id": new_request_id()}
    request = request_from_json(obj, settings)
    check_encoded_images(request, settings)
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(data) > settings.max_request_bytes:
        raise PayloadTooLarge(
            f"the request is {len(data)} bytes as a message; the limit is {settings.max_request_bytes} "
            "(MAX_REQUEST_BYTES): send fewer or smaller images per request",
            request_id=request.request_id,
        )
    return Accepted(request_id=request.request_id, data=data, images=len(request.instances))


def check_encoded_images(request: PredictRequest, settings: Settings) -> None:
    """Check each PNG/JPEG's container and header dimensions, decoding no pixel."""
    for index, instance in enumerate(request.instances):
        if not isinstance(instance, EncodedImage):
            continue
        try:
            width, height = image_size(instance.data)
        except InvalidImage as exc:
            raise InvalidImage(f"instance {index}: {exc.message}", index=index,
                               request_id=request.request_id) from exc
        if width == 0 or height == 0:
            raise InvalidImage(f"instance {index}: header declares a zero dimension ({width}x{height})",
                               index=index, request_id=request.request_id)
        if width > settings.max_image_side or height > settings.max_image_side:
            raise PayloadTooLarge(
                f"instance {index}: image is {width}x{height} pixels, the limit is {settings.max_image_side} "
                "per side (MAX_IMAGE_SIDE)",
                code="image_too_large",  # the code predict gives the same image, so both paths agree
                index=index,
                request_id=request.request_id,
            )


def _in_batch(exc: PipelineError, position: int) -> PipelineError:
    """The same error, its message saying which request of the batch failed."""
    return type(exc)(f"request {position} of the batch: {exc.message}", code=exc.code, index=exc.index,
                     request_id=exc.request_id)

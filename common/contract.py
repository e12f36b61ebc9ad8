"""The message contract, version 1: the one validation step every entry point runs.

A request arrives either as JSON (``common/schemas/request.v1.json``) or in the compact binary form
(raw ``uint8`` pixels as the body; request id, shape and content type in attributes / headers).
:func:`parse_request` turns both into a :class:`PredictRequest`; everything after it is broker-agnostic.
Every rejection is a :class:`~common.errors.PermanentError` whose ``code`` is one of the enum in
``common/schemas/error.v1.json``, carrying the request id whenever the message had a usable one.

This module never reads a file, a URL or a bucket: it only checks that a ``gs://`` URI names an
allow-listed bucket. Fetching and decoding images is the predictor's job.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import numpy as np

from common.errors import ForbiddenSource, InvalidRequest, PayloadTooLarge, PipelineError, UnknownModel
from common.settings import Settings

SCHEMA_VERSION = 1
IMAGE_SIDE = 28
JSON_CONTENT_TYPE = "application/json"
PIXELS_CONTENT_TYPE = "application/x-fashion-pixels"
"""Binary form: body = n*28*28 bytes, row-major uint8; attributes request_id, shape "n,28,28"."""

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_GCS_URI_RE = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/([^\x00-\x1f\x7f]{1,1024})$")


@dataclass(frozen=True)
class EncodedImage:
    """A PNG or JPEG file sent inline (base64 in JSON)."""

    data: bytes


@dataclass(frozen=True)
class GcsImage:
    """An image object in an allow-listed Cloud Storage bucket."""

    bucket: str
    name: str

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


Instance = np.ndarray | EncodedImage | GcsImage
"""A pixel array is float32 of shape (28, 28) with values in [0, 1], ready for the model."""


@dataclass(frozen=True)
class PredictRequest:
    """A validated request: what the predict handler works on, whatever broker it came from."""

    request_id: str
    instances: tuple[Instance, ...]
    top_k: int = 1
    model: str | None = None


@cache
def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of ``kind`` ("request", "result" or "error"), version 1."""
    text = resources.files("common.schemas").joinpath(f"{kind}.v{SCHEMA_VERSION}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(kind: str) -> Any:
    # fastjsonschema compiles the schema to Python once: about 100x faster than walking it per message.
    return fastjsonschema.compile(load_schema(kind))


def validate(kind: str, obj: Any) -> None:
    """Raise ``fastjsonschema.JsonSchemaException`` if ``obj`` breaks schema ``kind`` (e.g. outgoing messages)."""
    _validator(kind)(obj)


# --- requests ---------------------------------------------------------------------------------


def parse_request(data: bytes, attributes: Mapping[str, str] | None, settings: Settings) -> PredictRequest:
    """Validate one message (body + attributes/headers) and return the typed request."""
    attributes = attributes or {}
    if len(data) > settings.max_request_bytes:
        raise PayloadTooLarge(
            f"message is {len(data)} bytes; the limit is {settings.max_request_bytes}",
            request_id=_usable_id(attributes.get("request_id")),
        )
    content_type = attributes.get("content_type", JSON_CONTENT_TYPE)
    if content_type == PIXELS_CONTENT_TYPE:
        return _parse_binary(data, attributes, settings)
    if content_type != JSON_CONTENT_TYPE:
        raise InvalidRequest(
            f"content_type {content_type[:80]!r} is not supported; use {JSON_CONTENT_TYPE} or {PIXELS_CONTENT_TYPE}",
            code="unsupported_content_type",
            request_id=_usable_id(attributes.get("request_id")),
        )
    return request_from_json(decode_json(data), settings)


def decode_json(data: bytes) -> Any:
    """Parse UTF-8 JSON; nesting too deep is caught. NaN/Infinity literals parse, and pixels reject them."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"body is not UTF-8: {exc.reason} at byte {exc.start}", code="invalid_json") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             code="invalid_json") from exc
    except RecursionError as exc:
        raise InvalidRequest("malformed JSON: nested too deeply", code="invalid_json") from exc


def request_from_json(obj: Any, settings: Settings) -> PredictRequest:
    """Validate an already-parsed JSON request against the schema and the configured limits."""
    request_id = _usable_id(obj.get("request_id")) if isinstance(obj, dict) else None
    try:
        return _request_from_json(obj, settings, request_id)
    except PipelineError as exc:
        exc.request_id = exc.request_id or request_id
        raise


def _request_from_json(obj: Any, settings: Settings, request_id: str | None) -> PredictRequest:
    if not isinstance(obj, dict):
        raise InvalidRequest("a request must be a JSON object with request_id and instances")
    instances = obj.get("instances")
    if isinstance(instances, list):
        if not instances:
            raise InvalidRequest("instances is empty: send at least one image", code="empty_batch")
        if len(instances) > settings.max_images_per_request:
            raise InvalidRequest(
                f"{len(instances)} images in one request; the limit is {settings.max_images_per_request}",
                code="too_many_images",
            )
        for index, instance in enumerate(instances):
            if isinstance(instance, str):
                raise ForbiddenSource(
                    f"instance {index} is a string; a message cannot name a file. "
                    'Send pixels, {"b64": ...} or {"gcs_uri": "gs://..."}',
                    index=index,
                )
    _check_schema(obj)
    assert request_id is not None  # the schema guarantees a well-formed id
    model = obj.get("model")
    if model is not None and model != settings.model_name:
        raise UnknownModel(f"model {model!r} is not served here; this deployment serves {settings.model_name!r}")
    top_k = int(obj.get("top_k", 1))
    if top_k > settings.max_top_k:
        raise InvalidRequest(f"top_k {top_k} is over the limit of {settings.max_top_k}")
    parsed = tuple(_parse_instance(instance, index, settings) for index, instance in enumerate(obj["instances"]))
    return PredictRequest(request_id=request_id, instances=parsed, top_k=top_k, model=model)


def _check_schema(obj: dict[str, Any]) -> None:
    try:
        _validator("request")(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        path = [str(part) for part in (exc.path or [])[1:]]  # the first element is "data"
        index = int(path[1]) if len(path) >= 2 and path[0] == "instances" and path[1].isdigit() else None
        message = exc.message if len(exc.message) <= 200 else exc.message[:200] + "..."
        raise InvalidRequest(f"{'/'.join(path) or 'request'}: {message}", index=index) from exc


def _parse_instance(instance: Any, index: int, settings: Settings) -> Instance:
    if isinstance(instance, list):
        return coerce_pixels(instance, index)
    if "b64" in instance:
        return EncodedImage(_decode_b64(instance["b64"], index, settings))
    return parse_gcs_uri(instance["gcs_uri"], settings, index=index)


def _decode_b64(text: str, index: int, settings: Settings) -> bytes:
    if len(text) * 3 // 4 > settings.max_image_bytes:
        raise PayloadTooLarge(
            f"instance {index}: encoded image is over MAX_IMAGE_BYTES ({settings.max_image_bytes})", index=index
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"instance {index}: b64 is not valid base64 ({exc})", code="invalid_base64",
                             index=index) from exc


def parse_gcs_uri(uri: str, settings: Settings, *, index: int | None = None) -> GcsImage:
    """Check that ``uri`` is a ``gs://`` URI on an allow-listed bucket; nothing else may be read."""
    where = f"instance {index}: " if index is not None else ""
    match = _GCS_URI_RE.match(uri)
    if not match:
        raise ForbiddenSource(f"{where}only gs://bucket/object URIs are accepted, got {uri[:100]!r}", index=index)
    bucket, name = match.groups()
    if bucket not in settings.allowed_buckets:
        raise ForbiddenSource(f"{where}bucket {bucket!r} is not on the allow-list (ALLOWED_BUCKETS)", index=index)
    if any(part in ("", ".", "..") for part in name.split("/")):
        # Cloud Storage refuses such names and its emulator drops the connection, which would read as an
        # outage and be retried for ever; path-like tricks are refused here, once, for every entry point.
        raise ForbiddenSource(f"{where}empty, '.' and '..' segments are not allowed in gs:// object names",
                              index=index)
    return GcsImage(bucket=bucket, name=name)


def coerce_pixels(value: Any, index: int = 0) -> np.ndarray:
    """Turn one image's raw pixels (28x28, 28x28x1 or 784; 0-255 or 0-1) into float32 28x28 in [0, 1].

    The scale rule: if no value exceeds 1, the image is on the 0-1 scale; otherwise 0-255.
    """
    try:
        array = np.asarray(value)
    except ValueError as exc:
        raise InvalidRequest(f"instance {index}: rows of different lengths", code="invalid_shape",
                             index=index) from exc
    if array.dtype.kind not in "iuf":
        raise InvalidRequest(f"instance {index}: pixels must be numbers", code="invalid_values", index=index)
    if array.shape == (IMAGE_SIDE * IMAGE_SIDE,) or array.shape == (IMAGE_SIDE, IMAGE_SIDE, 1):
        array = array.reshape(IMAGE_SIDE, IMAGE_SIDE)
    if array.shape != (IMAGE_SIDE, IMAGE_SIDE):
        raise InvalidRequest(
            f"instance {index}: shape {array.shape} is not 28x28, 28x28x1 or 784", code="invalid_shape", index=index
        )
    pixels = array.astype(np.float32, copy=False)
    if not np.isfinite(pixels).all():
        raise InvalidRequest(f"instance {index}: NaN or infinite pixel values", code="invalid_values", index=index)
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 255:
        raise InvalidRequest(
            f"instance {index}: pixel values must lie in 0-255 (or 0-1), found {low:g}..{high:g}",
            code="invalid_values",
            index=index,
        )
    return pixels if high <= 1.0 else pixels / np.float32(255.0)


def _parse_binary(data: bytes, attributes: Mapping[str, str], settings: Settings) -> PredictRequest:
    request_id = _usable_id(attributes.get("request_id"))
    if request_id is None:
        raise InvalidRequest("binary request: attribute request_id is missing or malformed")
    try:
        shape = tuple(int(part) for part in attributes.get("shape", "").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise InvalidRequest(
            f"binary request: attribute shape must be 'n,28,28', got {attributes.get('shape', '')[:40]!r}",
            code="invalid_shape",
            request_id=request_id,
        )
    count = shape[0]
    if count < 1:
        raise InvalidRequest("binary request: no images", code="empty_batch", request_id=request_id)
    if count > settings.max_images_per_request:
        raise InvalidRequest(
            f"{count} images in one request; the limit is {settings.max_images_per_request}",
            code="too_many_images",
            request_id=request_id,
        )
    if len(data) != count * IMAGE_SIDE * IMAGE_SIDE:
        raise InvalidRequest(
            f"binary request: body is {len(data)} bytes, shape {count},28,28 needs {count * IMAGE_SIDE**2}",
            code="invalid_shape",
            request_id=request_id,
        )
    top_k = _int_attribute(attributes, "top_k", 1, request_id)
    if not 1 <= top_k <= settings.max_top_k:
        raise InvalidRequest(f"top_k must lie in 1..{settings.max_top_k}", request_id=request_id)
    model = attributes.get("model")
    if model is not None and model != settings.model_name:
        raise UnknownModel(f"model {model[:64]!r} is not served here; this deployment serves {settings.model_name!r}",
                           request_id=request_id)
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(count, IMAGE_SIDE, IMAGE_SIDE)
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    return PredictRequest(request_id=request_id, instances=tuple(scaled), top_k=top_k, model=model)


def _int_attribute(attributes: Mapping[str, str], name: str, default: int, request_id: str) -> int:
    raw = attributes.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise InvalidRequest(f"attribute {name} must be an integer", request_id=request_id) from exc


def encode_pixels(
    request_id: str, pixels: np.ndarray, *, top_k: int = 1, model: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The compact binary form of ``pixels`` (uint8, n x 28 x 28): body and attributes to publish."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"pixels must be uint8 of shape (n, 28, 28), got {pixels.dtype} {pixels.shape}")
    if not REQUEST_ID_RE.match(request_id):
        raise ValueError(f"request_id {request_id!r} does not match {REQUEST_ID_RE.pattern}")
    attributes = {
        "content_type": PIXELS_CONTENT_TYPE,
        "request_id": request_id,
        "shape": f"{pixels.shape[0]},{IMAGE_SIDE},{IMAGE_SIDE}",
        "top_k": str(top_k),
    }
    if model is not None:
        attributes["model"] = model
    return np.ascontiguousarray(pixels).tobytes(), attributes


def _usable_id(value: Any) -> str | None:
    return value if isinstance(value, str) and REQUEST_ID_RE.match(value) else None


# --- results and errors ---------------------------------------------------------------------------


def make_result(
    request_id: str,
    model: str,
    model_version: str,
    predictions: Sequence[Mapping[str, Any]],
    started: float,
) -> dict[str, Any]:
    """The results-topic message; ``started`` is a ``time.perf_counter()`` reading."""
    return {
        "schema_version": SCHEMA_VERSION,
        "request_id": request_id,
        "model": model,
        "model_version": model_version,
        "predictions": list(predictions),
        "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
    }


def make_error(error: PipelineError, *, request_id: str | None = None, message_id: str | None = None) -> dict[str, Any]:
    """The errors-topic message for ``error``."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "request_id": request_id or error.request_id,
        "error": error.to_dict(),
    }
    if message_id is not None:
        out["message_id"] = message_id
    return out

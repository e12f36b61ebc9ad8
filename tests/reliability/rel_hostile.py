"""A table of hostile inputs, each with the structured error it must get at ingest and on the topics.

Every case is a message body plus attributes (Pub/Sub attributes / Kafka headers) and the HTTP
Content-Type ingest sees. ``ingest`` is the HTTP status ingest answers (202 when the request is
well-formed at the edge and only predict can tell, e.g. an object that does not exist); ``code`` is
the error code the caller finally gets, from the HTTP body or from the errors topic. Paths in the
cases point at a canary file the tests watch: nothing may ever open it.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from common.contract import PIXELS_CONTENT_TYPE

ALLOWED_BUCKET = "rel-user-images"
# Limits every server of the battery runs with (small, so "oversized" needs small bodies).
LIMITS = {"MAX_REQUEST_BYTES": "200000", "MAX_IMAGE_BYTES": "150000", "MAX_IMAGE_SIDE": "4096",
          "MAX_IMAGES_PER_REQUEST": "256", "ALLOWED_BUCKETS": ALLOWED_BUCKET}
JSON = "application/json"


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    code: str  # the error code the caller gets in the end
    ingest: int | None  # HTTP status at ingest; None: not something an HTTP caller can send
    content_type: str = JSON
    attributes: dict[str, str] = field(default_factory=dict)  # extra attributes / headers on the topics
    topic_code: str | None = None  # when the topics answer with another code than ingest
    has_id: bool = True  # the error names the case's request id (False: the id itself is the attack)
    query: dict[str, str] = field(default_factory=dict)

    @property
    def rid(self) -> str:
        return f"h-{self.name}"

    def expected(self, channel: str) -> str:
        return self.topic_code or self.code if channel != "ingest" else self.code


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` zeros: about 50 kB on the wire, 400 MB once decoded
    to 8-bit gray (OpenCV would allocate it all)."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    block = row * 1000
    parts = [comp.compress(block) for _ in range(side // 1000)]
    parts.append(comp.compress(row * (side % 1000)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def jpeg_huge_header() -> bytes:
    """A JPEG whose frame header declares 65000 x 65000 pixels (no scan data)."""
    sof = struct.pack(">BHHB", 8, 65000, 65000, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def real_png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (28, 28), dtype=np.uint8))
    assert ok
    return bytes(buf)


def _req(rid: str, *instances: object, **extra: object) -> bytes:
    return json.dumps({"request_id": rid, "instances": list(instances), **extra}).encode()


def _b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def dot_segment_uri(canary: Path) -> str:
    """A gs:// URI whose object name climbs out with literal ".." segments. The storage emulator
    drops the connection on such names, which the predictor takes for an outage (transient), so the
    message is redelivered for ever. The contract should refuse them up front (forbidden_source)."""
    return f"gs://{ALLOWED_BUCKET}/../../../..{canary}"


def cases(canary: Path) -> list[Hostile]:
    """The battery. ``canary`` is a real PNG no message may make the service read."""
    c = str(canary)
    depth = 50_000
    bomb = png_bomb()
    return [
        Hostile("oversized-body", _req("h-oversized-body", *([[255] * 784] * 70)), "payload_too_large", 413),
        Hostile("deep-json", b'{"request_id": "h-deep-json", "instances": ' + b"[" * depth + b"]" * depth + b"}",
                "invalid_json", 400, has_id=False),
        Hostile("deep-instance", _req("h-deep-instance", json.loads("[" * 200 + "0" + "]" * 200)),
                "invalid_shape", 400),
        Hostile("png-bomb-b64", _req("h-png-bomb-b64", _b64(bomb)), "image_too_large", 413),
        Hostile("png-bomb-raw", bomb, "image_too_large", 413, content_type="image/png",
                query={"request_id": "h-png-bomb-raw"}, topic_code="unsupported_content_type"),
        Hostile("jpeg-huge-header", _req("h-jpeg-huge-header", _b64(jpeg_huge_header())), "image_too_large", 413),
        Hostile("truncated-png", _req("h-truncated-png", _b64(real_png()[:60])), "invalid_image", 202),
        Hostile("gif", _req("h-gif", _b64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")), "invalid_image", 400),
        Hostile("svg-xxe", _req("h-svg-xxe", _b64(
            f'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file://{c}">]><svg>&x;</svg>'.encode())),
            "invalid_image", 400),
        Hostile("gs-off-allowlist", _req("h-gs-off-allowlist", {"gcs_uri": "gs://someone-elses-bucket/a.png"}),
                "forbidden_source", 400),
        Hostile("gs-bucket-prefix", _req("h-gs-bucket-prefix", {"gcs_uri": f"gs://{ALLOWED_BUCKET}.evil.example/a"}),
                "forbidden_source", 400),
        # Encoded, the traversal is just an object name that does not exist. (Literal ".." segments:
        # see DOT_SEGMENT_URI and the test that the contract refuses them.)
        Hostile("gs-traversal", _req("h-gs-traversal", {"gcs_uri": f"gs://{ALLOWED_BUCKET}/..%2F..%2F..{c}"}),
                "image_not_found", 202),
        Hostile("gs-null-byte", _req("h-gs-null-byte", {"gcs_uri": f"gs://{ALLOWED_BUCKET}/a\u0000{c}"}),
                "forbidden_source", 400),
        Hostile("file-uri", _req("h-file-uri", f"file://{c}"), "forbidden_source", 400),
        Hostile("gcs-uri-file-scheme", _req("h-gcs-uri-file-scheme", {"gcs_uri": f"file://{c}"}),
                "forbidden_source", 400),
        Hostile("metadata-url", _req("h-metadata-url", {"gcs_uri": "http://169.254.169.254/computeMetadata/v1/"}),
                "forbidden_source", 400),
        Hostile("local-path", _req("h-local-path", c), "forbidden_source", 400),
        Hostile("path-traversal", _req("h-path-traversal", "../../../../../../.." + c), "forbidden_source", 400),
        Hostile("b64-of-path", _req("h-b64-of-path", _b64(c.encode())), "invalid_image", 400),
        Hostile("request-id-crlf", _req("h-id\r\nSet-Cookie: pwned=1", [0] * 784), "invalid_request", 400,
                has_id=False),
        Hostile("query-id-crlf", real_png(), "invalid_request", 400, content_type="image/png",
                query={"request_id": "h-q\r\nX-Injected: 1"}, topic_code="unsupported_content_type", has_id=False),
        Hostile("content-type-injection", _req("h-content-type-injection", [0] * 784), "unsupported_content_type",
                None, attributes={"content_type": "application/json\r\nX-Injected: 1"}),
        Hostile("binary-shape-huge", bytes(784), "too_many_images", None,
                attributes={"content_type": PIXELS_CONTENT_TYPE, "shape": "1000000000,28,28"}),
        Hostile("binary-shape-negative", bytes(784), "empty_batch", None,
                attributes={"content_type": PIXELS_CONTENT_TYPE, "shape": "-1,28,28"}),
        Hostile("non-utf8", b'{"request_id": "h-non-utf8", "instances": [[\xff\xfe\xfd]]}', "invalid_json", 400,
                has_id=False),
        Hostile("nan-pixels", b'{"request_id": "h-nan-pixels", "instances": [[' + b"NaN, " * 783 + b"NaN]]}",
                "invalid_values", 400),
        Hostile("huge-number", b'{"request_id": "h-huge-number", "instances": [[' + b"1e999, " * 783 + b"0]]}",
                "invalid_values", 400),
        Hostile("huge-top-k", _req("h-huge-top-k", [0] * 784, top_k=10**30), "invalid_request", 400),
        Hostile("long-request-id", _req("h" * 10_000, [0] * 784), "invalid_request", 400, has_id=False),
        Hostile("model-traversal", _req("h-model-traversal", [0] * 784, model="../../../etc/passwd"),
                "unknown_model", 400),
        Hostile("too-many-images", _req("h-too-many-images", *([[0]] * 300)), "too_many_images", 413),
        Hostile("top-level-string", json.dumps(c).encode(), "invalid_request", 400, has_id=False),
        Hostile("empty-body", b"", "invalid_json", 400, has_id=False),
    ]

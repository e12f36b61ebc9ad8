"""Send prediction requests from image files, .npy arrays or the Fashion-MNIST test set.

    python -m pipeline.sender --fashion-mnist 20                 # 20 test images, to BROKER's requests topic
    python -m pipeline.sender shoe.jpg boot.png                  # image files (sent as base64 PNG/JPEG)
    python -m pipeline.sender --npy batch.npy --batch-size 8     # arrays, 8 images per request
    python -m pipeline.sender --fashion-mnist 5 --ingest http://127.0.0.1:8080/   # through ingest (HTTP)

Publishing is asynchronous: every message is handed to the batching publisher first, then the
command waits for all confirmations and prints one line per request (its id, what it holds, and
for test-set images the true label). Arrays go in the compact binary form unless ``--format json``.
Follow the answers with ``python -m pipeline.results``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import encode_pixels
from common.messaging import BasicPublisher, make_publisher
from common.settings import Settings
from pipeline.requests import CLASS_NAMES, array_request, b64_request, load_npy, load_test_set


@dataclass
class Outgoing:
    """One request ready to send: either a JSON dict or binary pixels with attributes."""

    request_id: str
    description: str
    json_body: dict[str, Any] | None = None
    binary: tuple[bytes, dict[str, str]] | None = None
    labels: list[int] = field(default_factory=list)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def from_arrays(pixels: np.ndarray, prefix: str, *, batch_size: int = 1, fmt: str = "binary", top_k: int = 1,
                labels: np.ndarray | None = None, first_index: int = 0) -> list[Outgoing]:
    """Requests for ``uint8`` (n, 28, 28) images, ``batch_size`` images each."""
    out = []
    for start, end in _chunks(len(pixels), batch_size):
        rid = f"{prefix}-{first_index + start:05d}"
        item = Outgoing(rid, f"{end - start} image(s) #{first_index + start}..{first_index + end - 1}")
        if fmt == "binary":
            item.binary = encode_pixels(rid, np.ascontiguousarray(pixels[start:end]), top_k=top_k)
        else:
            item.json_body = array_request(rid, pixels[start:end], top_k=top_k)
        if labels is not None:
            item.labels = [int(x) for x in labels[start:end]]
            item.description += " true: " + ", ".join(CLASS_NAMES[x] for x in item.labels)
        out.append(item)
    return out


def from_files(paths: Sequence[str | Path], prefix: str, *, batch_size: int = 1, top_k: int = 1) -> list[Outgoing]:
    """Requests carrying image files as base64 (the predictor decodes and prepares them)."""
    out = []
    for start, end in _chunks(len(paths), batch_size):
        group = [Path(p) for p in paths[start:end]]
        rid = f"{prefix}-{start:05d}"
        body = b64_request(rid, [p.read_bytes() for p in group], top_k=top_k)
        out.append(Outgoing(rid, ", ".join(p.name for p in group), json_body=body))
    return out


def publish(publisher: BasicPublisher, topic: str, items: Sequence[Outgoing],
            timeout: float = 30.0) -> dict[str, str | BaseException]:
    """Hand every request to the publisher, then wait for all; maps request id -> message id or error."""
    futures: list[tuple[str, Future[str]]] = []
    for item in items:
        if item.binary is not None:
            data, attributes = item.binary
            futures.append((item.request_id, publisher.publish(topic, data, attributes)))
        else:
            assert item.json_body is not None
            futures.append((item.request_id, publisher.publish(topic, item.json_body,
                                                                {"request_id": item.request_id})))
    wait_futures([f for _, f in futures], timeout=timeout)
    outcome: dict[str, str | BaseException] = {}
    for rid, future in futures:
        if not future.done():
            outcome[rid] = TimeoutError("not confirmed in time")
        else:
            error = future.exception()
            outcome[rid] = error if error is not None else future.result()
    return outcome


def post_to_ingest(url: str, items: Sequence[Outgoing], timeout: float = 30.0,
                   per_call: int = 100) -> dict[str, str | BaseException]:
    """POST JSON requests to an ingest endpoint in batches; maps request id -> "accepted" or error."""
    if any(item.json_body is None for item in items):
        raise ValueError("the ingest endpoint takes JSON requests: use --format json")
    outcome: dict[str, str | BaseException] = {}
    for start in range(0, len(items), per_call):
        chunk = items[start : start + per_call]
        request = urllib.request.Request(url, data=json.dumps([item.json_body for item in chunk]).encode("utf-8"),
                                         method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                answer = json.loads(resp.read())
            outcome.update({rid: "accepted" for rid in answer["request_ids"]})
        except urllib.error.HTTPError as exc:
            error = RuntimeError(f"HTTP {exc.code}: {exc.read().decode('utf-8', 'replace')[:500]}")
            outcome.update({item.request_id: error for item in chunk})
        except OSError as exc:
            outcome.update({item.request_id: exc for item in chunk})
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sender", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="PNG or JPEG files")
    parser.add_argument("--fashion-mnist", type=int, metavar="N", default=0, help="send N test-set images")
    parser.add_argument("--offset", type=int, default=0, help="first test-set index (default 0)")
    parser.add_argument("--npy", action="append", default=[], help=".npy file of (n,28,28), (n,784) or (28,28)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--format", choices=("binary", "json"), default="binary",
                        help="how arrays travel (default binary; ingest needs json)")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--prefix", default=f"send-{int(time.time())}", help="request id prefix")
    parser.add_argument("--broker", choices=("pubsub", "kafka"), help="default: BROKER")
    parser.add_argument("--ingest", metavar="URL", help="POST to this ingest URL instead of publishing")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")

    fmt = "json" if args.ingest else args.format
    items: list[Outgoing] = []
    if args.fashion_mnist:
        images, labels = load_test_set(args.fashion_mnist, args.offset)
        items += from_arrays(images, f"{args.prefix}-fm", batch_size=args.batch_size, fmt=fmt, top_k=args.top_k,
                             labels=labels, first_index=args.offset)
    for index, path in enumerate(args.npy):
        items += from_arrays(load_npy(path), f"{args.prefix}-npy{index}", batch_size=args.batch_size, fmt=fmt,
                             top_k=args.top_k)
    if args.files:
        items += from_files(args.files, f"{args.prefix}-file", batch_size=args.batch_size, top_k=args.top_k)
    if not items:
        parser.error("nothing to send: give image files, --npy or --fashion-mnist N")

    settings = Settings.from_env(broker=args.broker)
    if args.ingest:
        outcome = post_to_ingest(args.ingest, items, timeout=settings.publish_timeout_s + 20)
        where = args.ingest
    else:
        with make_publisher(settings) as publisher:
            outcome = publish(publisher, settings.requests_topic, items, timeout=settings.publish_timeout_s + 5)
        where = f"{settings.broker} topic {settings.requests_topic}"
    failed = 0
    for item in items:
        result = outcome.get(item.request_id, RuntimeError("no answer"))
        if isinstance(result, BaseException):
            failed += 1
            print(f"{item.request_id}  FAILED {result}  ({item.description})")
        else:
            print(f"{item.request_id}  sent  ({item.description})")
    print(f"{len(items) - failed} of {len(items)} request(s) sent to {where}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

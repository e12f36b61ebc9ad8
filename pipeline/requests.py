"""Where sample requests come from: the Fashion-MNIST test set, .npy arrays and image files.

Shared by the sender command, the local run and the ingest benchmark, so that all three send the
same, real images in the contract's forms (JSON arrays, base64 PNG/JPEG, compact binary pixels).
"""

from __future__ import annotations

import base64
import gzip
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.contract import IMAGE_SIDE

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or plain), the format of the official Fashion-MNIST files."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_test_set(limit: int | None = None, offset: int = 0,
                  folder: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The official test split: ``uint8`` images (n, 28, 28) and labels (n,), from ``offset``."""
    images = _read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    end = len(images) if limit is None else min(len(images), offset + limit)
    return images[offset:end], labels[offset:end]


def load_npy(path: str | Path) -> np.ndarray:
    """An .npy file of one or more images -> ``uint8`` (n, 28, 28); 0-1 floats are scaled to 0-255."""
    array = np.load(path, allow_pickle=False)
    if array.ndim == 2 and array.shape[1] == IMAGE_SIDE * IMAGE_SIDE:
        array = array.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    elif array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    elif array.shape == (IMAGE_SIDE, IMAGE_SIDE):
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"{path}: shape {array.shape} is not (n, 28, 28), (n, 784) or (28, 28)")
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise ValueError(f"{path}: values must be finite and lie in 0-255 (or 0-1)")
    if array.max() <= 1.0:
        array = array * 255.0
    return np.rint(array).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode one ``uint8`` 28x28 image as PNG, as a user's file would be."""
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(buf)


def array_request(request_id: str, pixels: np.ndarray, *, top_k: int = 1) -> dict[str, Any]:
    """A JSON request whose instances are 28x28 nested lists of 0-255 integers."""
    return {"request_id": request_id, "top_k": top_k, "instances": [image.tolist() for image in pixels]}


def b64_request(request_id: str, files: list[bytes], *, top_k: int = 1) -> dict[str, Any]:
    """A JSON request whose instances are base64 PNG/JPEG files."""
    return {"request_id": request_id, "top_k": top_k,
            "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in files]}

"""Reader for the IDX files Fashion-MNIST ships in (gzip-compressed or plain).

Format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 = unsigned byte), a byte
with the number of dimensions, one big-endian uint32 per dimension, then the data row-major.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from trainer import CLASS_NAMES
from trainer.data.dataset import DataError, Dataset

UBYTE = 0x08
OFFICIAL_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_bytes(path: Path) -> bytes:
    """Whole file content, gunzipped when it starts with the gzip magic; corrupt gzip -> DataError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def parse_idx(content: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode one IDX blob to a uint8 array, checking magic, dimensions and exact length."""
    if len(content) < 4:
        raise DataError(f"{source}: too short for an IDX header ({len(content)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", content[:4])
    if zero != 0:
        raise DataError(f"{source}: not an IDX file (bad magic {content[:4].hex()})")
    if dtype != UBYTE:
        raise DataError(f"{source}: IDX type 0x{dtype:02x} not supported, expected unsigned byte (0x08)")
    if not 1 <= ndim <= 3:
        raise DataError(f"{source}: IDX with {ndim} dimensions, expected 1 (labels) or 3 (images)")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{source}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", content[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(content) - header
    if body != expected:
        what = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{source}: {what}: header says {dims} = {expected} bytes, found {body}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an ``.idx*-ubyte`` file, gzipped or not."""
    p = Path(path)
    return parse_idx(_read_bytes(p), str(p))


def load_idx_pair(images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str],
                  class_names: tuple[str, ...] = CLASS_NAMES) -> Dataset:
    """Images and labels from two IDX files, checked against each other and against ``class_names``."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected a 3-D image file [n, rows, cols], got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label file, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(class_names):
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range for {len(class_names)} classes")
    return Dataset(images, labels.astype(np.int64), tuple(class_names), source=str(images_path))


def load_official(directory: str | os.PathLike[str] = DEFAULT_DIR, split: str = "train") -> Dataset:
    """The official ``train`` (60,000) or ``test`` (10,000) split from a folder holding the four files."""
    if split not in OFFICIAL_FILES:
        raise ValueError(f"split must be one of {sorted(OFFICIAL_FILES)}, got {split!r}")
    images, labels = OFFICIAL_FILES[split]
    d = Path(directory)
    return load_idx_pair(d / images, d / labels)

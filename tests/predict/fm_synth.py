"""Real Fashion-MNIST test images, and "photos" made from them for the preprocessing tests.

A photo here is what a user would upload: the garment dark on a white page, upscaled, in colour,
at an arbitrary place on a larger canvas, JPEG-compressed. Built from the real test split so the
label is known.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import cv2
import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_idx(split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images n x 28 x 28 uint8, labels n uint8)`` from the official IDX files."""
    with gzip.open(FASHION_DIR / f"{split}-images-idx3-ubyte.gz", "rb") as fh:
        _, n, rows, cols = struct.unpack(">IIII", fh.read(16))
        images = np.frombuffer(fh.read(), dtype=np.uint8).reshape(n, rows, cols)
    with gzip.open(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz", "rb") as fh:
        fh.read(8)
        labels = np.frombuffer(fh.read(), dtype=np.uint8)
    return images, labels


def photo_of(img: np.ndarray, rng: np.random.Generator, *, light_background: bool = True) -> np.ndarray:
    """A colour BGR "photo" of a 28x28 Fashion-MNIST garment on a large plain canvas."""
    scale = int(rng.integers(8, 16))
    big = cv2.resize(img, (28 * scale, 28 * scale), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(big.astype(np.float32) / 255.0, 0, 1)[:, :, None]
    if light_background:
        colour = rng.uniform(0, 110, size=3).astype(np.float32)  # a dark garment on white paper
        paper = float(rng.uniform(235, 255))
    else:
        colour = rng.uniform(170, 255, size=3).astype(np.float32)  # a light garment on black cloth
        paper = float(rng.uniform(0, 25))
    garment = (paper * (1 - alpha) + colour * alpha).astype(np.float32)
    h, w = garment.shape[:2]
    canvas_h = h + int(rng.integers(40, 400))
    canvas_w = w + int(rng.integers(40, 400))
    canvas = np.full((canvas_h, canvas_w, 3), paper, dtype=np.float32)
    y = int(rng.integers(10, canvas_h - h - 10))
    x = int(rng.integers(10, canvas_w - w - 10))
    canvas[y : y + h, x : x + w] = garment
    canvas += np.asarray(rng.normal(0, 3, size=canvas.shape), dtype=np.float32)  # sensor noise
    return np.clip(canvas, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, ext: str = ".jpg", quality: int = 85) -> bytes:
    """Encode with OpenCV as a user's camera or editor would."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise RuntimeError(f"cannot encode {ext}")
    return buf.tobytes()

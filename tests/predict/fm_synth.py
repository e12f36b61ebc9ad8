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


# Scenes a user's photo may show: garment colour range and background range (0-255 gray levels).
SCENES = {
    "dark_on_white": ((0, 110), (235, 255)),     # a dark garment on white paper
    "pale_on_white": ((150, 215), (235, 255)),   # a light-coloured garment on white: low contrast
    "light_on_black": ((170, 255), (0, 25)),     # a light garment on black cloth
    "dark_on_grey": ((0, 90), (150, 190)),       # a dark shoe on a grey floor
    "light_on_grey": ((200, 255), (90, 130)),    # a white shirt on a grey table
}


def photo_of(img: np.ndarray, rng: np.random.Generator, *, light_background: bool = True,
             scene: str | None = None, light_falloff: float = 0.0) -> np.ndarray:
    """A colour BGR "photo" of a 28x28 Fashion-MNIST garment on a large plain canvas.

    ``scene`` names one of SCENES (default: dark on white, or light on black when
    ``light_background`` is False); ``light_falloff`` darkens the whole photo from right to left
    by that fraction, as uneven lighting does.
    """
    scene = scene or ("dark_on_white" if light_background else "light_on_black")
    colour_range, paper_range = SCENES[scene]
    scale = int(rng.integers(8, 16))
    big = cv2.resize(img, (28 * scale, 28 * scale), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(big.astype(np.float32) / 255.0, 0, 1)[:, :, None]
    colour = rng.uniform(*colour_range, size=3).astype(np.float32)
    paper = float(rng.uniform(*paper_range))
    garment = (paper * (1 - alpha) + colour * alpha).astype(np.float32)
    h, w = garment.shape[:2]
    canvas_h = h + int(rng.integers(40, 400))
    canvas_w = w + int(rng.integers(40, 400))
    canvas = np.full((canvas_h, canvas_w, 3), paper, dtype=np.float32)
    y = int(rng.integers(10, canvas_h - h - 10))
    x = int(rng.integers(10, canvas_w - w - 10))
    canvas[y : y + h, x : x + w] = garment
    if light_falloff:
        canvas *= np.linspace(1.0 - light_falloff, 1.0, canvas_w, dtype=np.float32)[None, :, None]
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * 3.0  # sensor noise
    return np.clip(canvas, 0, 255).astype(np.uint8)


def encode(img: np.ndarray, ext: str = ".jpg", quality: int = 85) -> bytes:
    """Encode with OpenCV as a user's camera or editor would."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise RuntimeError(f"cannot encode {ext}")
    return buf.tobytes()

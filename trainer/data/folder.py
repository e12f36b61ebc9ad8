"""Reader for a folder of images with one subfolder per class (``root/<class name>/*.png``).

Each image goes through ``common.imaging.load_image_file``, the very preprocessing the predictor
applies to a user's picture (gray, garment light on dark, cropped and framed), so training and
serving see the same kind of input. Class names are the subfolder names in sorted order.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from common.errors import PipelineError
from common.imaging import image_size, load_image_file
from trainer.data.dataset import DataError, Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# When no size is given, images that all share one size no larger than this keep it; otherwise
# they are resized to Fashion-MNIST's 28x28.
MAX_NATIVE_SIDE = 128
FALLBACK_SIZE = (28, 28)


def _class_files(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    # Numeric folder names ("0".."9") sort as numbers, so they keep their label order.
    classes = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))
    if len(classes) < 2:
        raise DataError(f"{root}: needs one subfolder per class (at least 2), found {len(classes)}")
    out: dict[str, list[Path]] = {}
    for d in classes:
        files = sorted(f for f in d.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{d}: class folder holds no PNG or JPEG images")
        out[d.name] = files
    return out


def _native_size(files: list[Path]) -> tuple[int, int]:
    """The one size all images share (``(rows, cols)``) if small, else 28x28."""
    sizes: Counter[tuple[int, int]] = Counter()
    for f in files:
        with f.open("rb") as fh:
            head = fh.read(256 * 1024)  # JPEG EXIF blocks can precede the size
        try:
            w, h = image_size(head)
        except PipelineError as exc:
            raise DataError(f"{f}: {exc}") from exc
        sizes[(h, w)] += 1
    if len(sizes) == 1:
        (size,) = sizes
        if max(size) <= MAX_NATIVE_SIDE:
            return size
    return FALLBACK_SIZE


def load_image_folder(root: str | os.PathLike[str], size: tuple[int, int] | None = None) -> Dataset:
    """Load every PNG/JPEG under ``root/<class>/`` as ``size`` (rows, cols) gray images."""
    r = Path(root)
    per_class = _class_files(r)
    all_files = [f for files in per_class.values() for f in files]
    target = size if size is not None else _native_size(all_files)
    images = np.empty((len(all_files), *target), dtype=np.uint8)
    labels = np.empty(len(all_files), dtype=np.int64)
    i = 0
    for label, files in enumerate(per_class.values()):
        for f in files:
            try:
                images[i] = load_image_file(f, size=target)
            except PipelineError as exc:
                raise DataError(f"{f}: {exc.message}") from exc
            labels[i] = label
            i += 1
    return Dataset(images, labels, tuple(per_class), source=str(r))

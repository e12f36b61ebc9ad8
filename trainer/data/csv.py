"""Reader for Kaggle-style Fashion-MNIST CSV files: ``label,pixel1,...,pixelN`` (header optional).

The image size is taken from the number of pixel columns (a square unless ``image_shape`` says
otherwise) and the number of classes from the labels, so other datasets in the same layout work.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer import CLASS_NAMES
from trainer.data.dataset import DataError, Dataset


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _shape_for(n_pixels: int, image_shape: tuple[int, int] | None, source: str) -> tuple[int, int]:
    if image_shape is not None:
        if image_shape[0] * image_shape[1] != n_pixels:
            raise DataError(f"{source}: {n_pixels} pixel columns do not make a {image_shape} image")
        return image_shape
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise DataError(f"{source}: {n_pixels} pixel columns is not a square image; pass the image shape")
    return side, side


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Fashion-MNIST's names for 10 classes, else ``"0" .. "n-1"``."""
    return CLASS_NAMES if num_classes == len(CLASS_NAMES) else tuple(str(i) for i in range(num_classes))


def load_csv(path: str | os.PathLike[str], image_shape: tuple[int, int] | None = None,
             class_names: Sequence[str] | None = None) -> Dataset:
    """Read a CSV (optionally ``.gz``) of one image per row: the label, then the pixels row-major."""
    p = Path(path)
    src = str(p)
    labels: list[int] = []
    rows: list[np.ndarray] = []
    width: int | None = None
    try:
        with _open_text(p) as fh:
            for line_no, row in enumerate(csv.reader(fh), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if line_no == 1 and not row[0].strip().lstrip("-").isdigit():
                    width = len(row)  # header: label,pixel1,...
                    continue
                if width is None:
                    width = len(row)
                if len(row) != width:
                    raise DataError(f"{src}:{line_no}: {len(row)} columns, expected {width} (truncated row?)")
                try:
                    values = np.asarray(row, dtype=np.int64)
                except ValueError as exc:
                    raise DataError(f"{src}:{line_no}: non-integer value ({exc})") from exc
                if values[1:].min() < 0 or values[1:].max() > 255:
                    raise DataError(f"{src}:{line_no}: pixel values must be in 0..255")
                labels.append(int(values[0]))
                rows.append(values[1:].astype(np.uint8))
    except FileNotFoundError as exc:
        raise DataError(f"{src}: no such file") from exc
    except (UnicodeDecodeError, EOFError, OSError) as exc:
        raise DataError(f"{src}: not a readable CSV file ({exc})") from exc
    if not rows or width is None:
        raise DataError(f"{src}: no data rows")
    if width < 2:
        raise DataError(f"{src}: needs a label column and pixel columns")
    shape = _shape_for(width - 1, image_shape, src)
    label_arr = np.asarray(labels, dtype=np.int64)
    if label_arr.min() < 0:
        raise DataError(f"{src}: negative label {int(label_arr.min())}")
    n_classes = len(class_names) if class_names is not None else int(label_arr.max()) + 1
    if int(label_arr.max()) >= n_classes:
        raise DataError(f"{src}: label {int(label_arr.max())} out of range for {n_classes} classes")
    names = tuple(class_names) if class_names is not None else default_class_names(n_classes)
    images = np.stack(rows).reshape(len(rows), *shape)
    return Dataset(images, label_arr, names, source=src)

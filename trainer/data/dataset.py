"""The in-memory dataset every loader returns, and the validation split carved from training data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import PermanentError


class DataError(PermanentError, ValueError):
    """Training data cannot be used as given: wrong sizes, labels out of range, truncated or corrupt files.

    It is both a :class:`ValueError` (the input is wrong) and part of the project's error family.
    """

    code = "invalid_training_data"


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 ``[n, rows, cols]`` (light garment on dark background) with int labels ``[n]``.

    Image size and class count come from the data itself, so a CSV or a folder of 32x32 images with
    five classes trains a model of that shape without touching any constant.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise DataError(f"{self.source}: images must be uint8 [n, rows, cols], got "
                            f"{self.images.dtype} {self.images.shape}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise DataError(f"{self.source}: {len(self.images)} images but labels of shape {self.labels.shape}")
        if len(self.images) == 0:
            raise DataError(f"{self.source}: no images")
        if len(self.class_names) < 2:
            raise DataError(f"{self.source}: need at least 2 classes, got {len(self.class_names)}")
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or hi >= len(self.class_names):
            raise DataError(f"{self.source}: labels must be in [0, {len(self.class_names) - 1}], "
                            f"found {lo}..{hi}")

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray, source_suffix: str = "") -> Dataset:
        """A dataset of the rows in ``index`` (same class names)."""
        return Dataset(self.images[index], self.labels[index], self.class_names, self.source + source_suffix)


@dataclass(frozen=True)
class Split:
    """Training data, the validation data carved from it, and the untouched test data (may be None)."""

    train: Dataset
    val: Dataset
    test: Dataset | None


def stratified_split(data: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``data`` into (train, val) with the same class balance, reproducibly for a seed.

    Validation comes out of the training data so that model selection never looks at the test split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_idx: list[np.ndarray] = []
    for c in range(data.num_classes):
        idx = np.flatnonzero(data.labels == c)
        if len(idx) == 0:
            continue
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val_idx.append(idx[:n_val])
    val = np.sort(np.concatenate(val_idx))
    mask = np.ones(len(data), dtype=bool)
    mask[val] = False
    train = np.flatnonzero(mask)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{data.source}: too few images ({len(data)}) to carve a validation split")
    return data.subset(train, "[train]"), data.subset(val, "[val]")

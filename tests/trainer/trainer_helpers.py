"""Writers for small IDX, CSV and image-folder datasets that the trainer tests generate."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.train import TrainResult

OFFICIAL_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (the exact layout of the official files)."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_csv(path: Path, images: np.ndarray, labels: np.ndarray, header: bool = True) -> Path:
    n_pixels = int(np.prod(images.shape[1:]))
    lines = []
    if header:
        lines.append("label," + ",".join(f"pixel{i}" for i in range(1, n_pixels + 1)))
    for img, lab in zip(images, labels, strict=True):
        lines.append(",".join(map(str, [int(lab), *img.ravel().tolist()])))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str], ext: str = ".png") -> Path:
    """One subfolder per class name, one image file per sample, named by its index."""
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        d = root / names[int(lab)]
        d.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(d / f"{i:05d}{ext}"), img):
            raise OSError(f"could not write {d / f'{i:05d}{ext}'}")
    return root


@dataclass
class SmokeRun:
    """What the session-wide smoke training run (conftest.py) produced."""

    cfg: TrainConfig
    train: Dataset
    val: Dataset
    test: Dataset
    result: TrainResult
    run_dir: Path
    seconds: float
    cpu_seconds: float

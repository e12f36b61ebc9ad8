"""IDX loader: round trips on generated files, the real official files, and one clear error per defect."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from trainer_helpers import OFFICIAL_DIR, idx_bytes, write_idx

from common.errors import PipelineError
from trainer import CLASS_NAMES
from trainer.data.dataset import DataError, stratified_split
from trainer.data.idx import load_idx_pair, load_official, read_idx


@pytest.fixture
def small(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 5, 7), dtype=np.uint8), rng.integers(0, 3, 12).astype(np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip_keeps_pixels_labels_and_shape(tmp_path: Path, small: tuple[np.ndarray, np.ndarray],
                                                  gz: bool) -> None:
    images, labels = small
    ip = write_idx(tmp_path / "i.idx", images, gz)
    lp = write_idx(tmp_path / "l.idx", labels, gz)
    data = load_idx_pair(ip, lp, class_names=("a", "b", "c"))
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.image_shape == (5, 7)  # size comes from the file, not from a constant
    assert data.num_classes == 3


def test_real_official_files() -> None:
    train = load_official(OFFICIAL_DIR, "train")
    test = load_official(OFFICIAL_DIR, "test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.class_names == CLASS_NAMES
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # Garments are light on a dark background: the border is almost always black.
    assert np.median(train.images[:, 0, :]) == 0


def test_validation_split_is_stratified_and_reproducible() -> None:
    train = load_official(OFFICIAL_DIR, "train")
    a_tr, a_val = stratified_split(train, 1 / 15, seed=1)
    _, b_val = stratified_split(train, 1 / 15, seed=1)
    assert len(a_val) == 4000 and len(a_tr) == 56000
    assert np.bincount(a_val.labels).tolist() == [400] * 10
    np.testing.assert_array_equal(a_val.images, b_val.images)


def _corrupt_cases(images: np.ndarray, labels: np.ndarray) -> dict[str, tuple[bytes, bytes, str]]:
    good_i, good_l = idx_bytes(images), idx_bytes(labels)
    wrong_type = good_i[:2] + b"\x0d" + good_i[3:]  # float32 type byte
    return {
        "bad magic": (b"\x12\x34" + good_i[2:], good_l, "bad magic"),
        "wrong element type": (wrong_type, good_l, "not supported"),
        "truncated body": (good_i[:-5], good_l, "truncated"),
        "trailing bytes": (good_i + b"\0\0", good_l, "trailing"),
        "header only": (good_i[:6], good_l, "truncated IDX header"),
        "empty file": (b"", good_l, "too short"),
        "labels given as images": (good_i, good_i, "expected a 1-D label file"),
        "count mismatch": (good_i, idx_bytes(labels[:-1]), "12 images but"),
        "label out of range": (good_i, idx_bytes(np.full_like(labels, 7)), "out of range"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases(np.zeros((12, 5, 7), np.uint8), np.zeros(12, np.uint8))))
def test_each_defect_raises_a_clear_data_error(tmp_path: Path, small: tuple[np.ndarray, np.ndarray],
                                               case: str) -> None:
    img_bytes, lab_bytes, message = _corrupt_cases(*small)[case]
    (tmp_path / "i.idx").write_bytes(img_bytes)
    (tmp_path / "l.idx").write_bytes(lab_bytes)
    with pytest.raises(DataError, match=message) as info:
        load_idx_pair(tmp_path / "i.idx", tmp_path / "l.idx", class_names=("a", "b", "c"))
    # One family: a ValueError for Python callers, a PipelineError with a stable code for the project.
    assert isinstance(info.value, ValueError) and isinstance(info.value, PipelineError)
    assert info.value.code == "invalid_training_data"
    assert "i.idx" in str(info.value) or "l.idx" in str(info.value)  # names the file at fault


def test_truncated_and_corrupt_gzip(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> None:
    packed = gzip.compress(idx_bytes(small[0]))
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "cut.gz")
    garbled = bytearray(packed)
    garbled[20:40] = b"\xff" * 20
    (tmp_path / "bad.gz").write_bytes(bytes(garbled))
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(tmp_path / "bad.gz")


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_official(tmp_path, "train")

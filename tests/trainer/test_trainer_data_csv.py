"""Kaggle-style CSV loader: real Fashion-MNIST rows round trip; every malformed file gets a clear error."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from trainer_helpers import OFFICIAL_DIR, write_csv

from trainer import CLASS_NAMES
from trainer.data.csv import load_csv
from trainer.data.dataset import DataError
from trainer.data.idx import load_official


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    test = load_official(OFFICIAL_DIR, "test")
    return test.images[:200], test.labels[:200]


def test_real_rows_round_trip_with_header(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample
    data = load_csv(write_csv(tmp_path / "f.csv", images, labels))
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.image_shape == (28, 28) and data.class_names == CLASS_NAMES


def test_without_header_and_gzipped(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample
    plain = write_csv(tmp_path / "f.csv", images, labels, header=False)
    (tmp_path / "f.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, tmp_path / "f.csv.gz"):
        np.testing.assert_array_equal(load_csv(path).images, images)


def test_size_and_classes_come_from_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 16, 16), dtype=np.uint8)
    labels = np.arange(30) % 4
    data = load_csv(write_csv(tmp_path / "s.csv", images, labels))
    assert data.image_shape == (16, 16) and data.num_classes == 4
    assert data.class_names == ("0", "1", "2", "3")
    rect = rng.integers(0, 256, (6, 8, 12), dtype=np.uint8)
    path = write_csv(tmp_path / "r.csv", rect, np.arange(6) % 2)
    with pytest.raises(DataError, match="not a square"):
        load_csv(path)
    np.testing.assert_array_equal(load_csv(path, image_shape=(8, 12)).images, rect)


def _lines(n_pixels: int = 4) -> list[str]:
    return ["label," + ",".join(f"pixel{i}" for i in range(1, n_pixels + 1)), "0,1,2,3,4", "1,5,6,7,8"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda ls: [*ls[:-1], "1,5,6"], "3 columns, expected 5"),          # truncated row
    (lambda ls: [*ls[:-1], "1,5,x,7,8"], "non-integer"),
    (lambda ls: [*ls[:-1], "1,5,6,7,300"], "pixel values must be in 0..255"),
    (lambda ls: [*ls[:-1], "-1,5,6,7,8"], "negative label"),
    (lambda ls: ls[:1], "no data rows"),
    (lambda ls: [], "no data rows"),
])
def test_malformed_files_raise_clear_errors(tmp_path: Path, edit: object, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(edit(_lines())) + "\n")  # type: ignore[operator]
    with pytest.raises(DataError, match=message) as info:
        load_csv(path)
    assert isinstance(info.value, ValueError) and "bad.csv" in str(info.value)


def test_label_out_of_range_for_given_classes(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("\n".join([*_lines(), "5,1,1,1,1"]) + "\n")
    with pytest.raises(DataError, match="label 5 out of range for 2 classes"):
        load_csv(path, class_names=("a", "b"))


def test_binary_garbage_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(DataError, match=r"x\.csv"):
        load_csv(tmp_path / "x.csv")
    with pytest.raises(DataError, match="no such file"):
        load_csv(tmp_path / "missing.csv")

"""Image-folder loader: one subfolder per class, the predictor's preprocessing, clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from trainer_helpers import OFFICIAL_DIR, write_folder

from common.imaging import load_image_file
from trainer.data.dataset import DataError
from trainer.data.folder import load_image_folder
from trainer.data.idx import load_official


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    test = load_official(OFFICIAL_DIR, "test")
    return test.images[:60], test.labels[:60]


def test_png_folder_of_real_images_round_trips(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample
    names = [f"class_{c}" for c in range(10)]
    data = load_image_folder(write_folder(tmp_path, images, labels, names))
    assert data.class_names == tuple(names)
    assert data.image_shape == (28, 28)
    # Files are read class by class; compare as sets of (label, pixels).
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(data.labels, labels[order])
    np.testing.assert_array_equal(data.images, images[order])


def test_same_preprocessing_as_the_predictor(tmp_path: Path) -> None:
    # A large dark-on-white JPEG "photo": the loader must give exactly what the predictor computes.
    photo = np.full((300, 240), 250, np.uint8)
    cv2.rectangle(photo, (60, 40), (180, 260), 30, -1)
    for cls in ("bag", "coat"):
        (tmp_path / cls).mkdir()
        cv2.imwrite(str(tmp_path / cls / "p.jpg"), photo)
    data = load_image_folder(tmp_path, size=(28, 28))
    expected = load_image_file(tmp_path / "bag" / "p.jpg", size=(28, 28))
    np.testing.assert_array_equal(data.images[0], expected)
    assert data.images[0][14, 14] > 200 and data.images[0][0, 0] < 30  # inverted: light garment on dark


def test_size_from_data_or_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (6, 20, 20), dtype=np.uint8)
    write_folder(tmp_path, imgs, np.arange(6) % 3, ["2", "10", "1"])
    data = load_image_folder(tmp_path)
    assert data.image_shape == (20, 20) and data.num_classes == 3
    assert data.class_names == ("1", "2", "10")  # numeric names keep numeric order
    assert load_image_folder(tmp_path, size=(28, 28)).image_shape == (28, 28)


def test_corrupt_image_names_the_file(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    write_folder(tmp_path, sample[0][:4], np.array([0, 0, 1, 1]), ["a", "b"])
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(cv2.imencode(".png", sample[0][0])[1].tobytes()[:60])  # truncated PNG
    with pytest.raises(DataError, match=r"broken\.png") as info:
        load_image_folder(tmp_path)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("layout", ["one class", "empty class", "not a dir"])
def test_bad_layouts(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray], layout: str) -> None:
    root = tmp_path / "data"
    if layout == "one class":
        write_folder(root, sample[0][:2], np.array([0, 0]), ["only"])
        match = "at least 2"
    elif layout == "empty class":
        write_folder(root, sample[0][:2], np.array([0, 0]), ["a"])
        (root / "b").mkdir()
        (root / "b" / "notes.txt").write_text("no images here")
        match = "no PNG or JPEG"
    else:
        root.write_text("a file")
        match = "not a directory"
    with pytest.raises(DataError, match=match):
        load_image_folder(root)

"""Calibration for the int8 export: training images only, reproducible, refused when mis-scaled."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.litert import calibration_images, to_tflite
from trainer.model import build_classifier, build_inference_model


def _data(n: int) -> Dataset:
    rng = np.random.default_rng(3)
    return Dataset(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n),
                   tuple(str(i) for i in range(10)), "synthetic[train]")


def test_calibration_draws_a_fixed_sample_of_the_given_images() -> None:
    data = _data(3000)
    a, b = calibration_images(data, 2000, seed=7), calibration_images(data, 2000, seed=7)
    np.testing.assert_array_equal(a, b)  # the same file comes out of the same run
    assert a.shape == (2000, 28, 28, 1) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0  # the model's input scale
    flat = {img.tobytes() for img in (data.images.astype(np.float32) / 255.0)}
    assert all(img[..., 0].tobytes() in flat for img in a[:50])
    assert not np.array_equal(a, calibration_images(data, 2000, seed=8))
    assert len(calibration_images(_data(300), 2000)) == 300  # small datasets give what they have


def test_calibration_images_must_look_like_model_input() -> None:
    model = build_inference_model(build_classifier((28, 28), 10, (4,)), flip_tta=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_tflite(model, np.full((4, 28, 28, 1), 255.0, np.float32))  # unscaled pixels
    with pytest.raises(ValueError, match="rows, cols, 1"):
        to_tflite(model, np.zeros((4, 28, 28), np.float32))
    with pytest.raises(ValueError, match="positive"):
        calibration_images(_data(10), 0)


def test_export_options_do_not_change_the_checkpoint_fingerprint() -> None:
    # A finished run is re-exported as float32, int8, with or without flip averaging, never retrained.
    base = TrainConfig()
    assert TrainConfig(quantize=False).fingerprint() == base.fingerprint()
    assert TrainConfig(flip_tta=False).fingerprint() == base.fingerprint()
    assert TrainConfig(epochs=59).fingerprint() != base.fingerprint()
    assert base.quantize  # int8 is the default export

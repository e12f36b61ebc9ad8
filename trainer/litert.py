"""Keras -> LiteRT (TFLite) conversion, optional int8 quantisation, and batched LiteRT inference.

The flatbuffer always takes float32 ``[batch, rows, cols, 1]`` pixels in [0, 1] with a resizable batch
dimension and returns float32 ``[batch, num_classes]`` probabilities, like the Keras model: the
predictor and ``common/model_store.py`` serve either kind of file without knowing which it is.

Why int8: on this 2-core machine the float32 flatbuffer runs about 1,700 images/s on one thread and
the int8 one (weights and activations) about 6,000, at the same accuracy (see models/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from trainer.data.dataset import Dataset

# How many training images calibrate the activation ranges. Measured on the bundled model's validation
# split (3 random draws each): 200 images gave 94.93% mean accuracy, 500 gave 95.03%, 1,000 95.06% and
# 2,000 95.08% (Keras: 94.93%), with the smallest spread between draws; 2,000 costs about 8 s of export.
CALIBRATION_IMAGES = 2000


def calibration_images(train: Dataset, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """``count`` training images drawn with a fixed seed, as float32 ``[n, rows, cols, 1]`` in [0, 1].

    Calibration must only see training data: drawing from the test split would leak it into the
    activation ranges of the file whose test accuracy the manifest reports.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    idx = np.sort(np.random.default_rng(seed).choice(len(train), min(count, len(train)), replace=False))
    return (train.images[idx].astype(np.float32) / 255.0)[..., None]


def to_tflite(model: keras.Model, representative: np.ndarray | None = None) -> bytes:
    """Convert ``model``; with ``representative`` images, quantise weights and activations to int8.

    Without ``representative`` the kernels stay float32 and outputs match Keras up to rounding. With
    float32 ``[n, rows, cols, 1]`` images in [0, 1], the converter measures each activation's range on
    them (post-training full integer quantisation) and runs int8 kernels; the input and output tensors
    stay float32 (the converter adds quantise/dequantise at the edges), so the served interface does
    not change. Ops without an int8 kernel fall back to float32 instead of failing the conversion.
    """
    images = None if representative is None else _check_representative(representative)
    # from_keras_model goes through a SavedModel export, which freezes the variables correctly;
    # converting a hand-made concrete function here produced NaN outputs (uninitialised variables).
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if images is not None:
        calibration = images

        def samples() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
    return bytes(converter.convert())


def _check_representative(representative: np.ndarray) -> np.ndarray:
    """Calibration images as float32, refusing what would calibrate the wrong ranges (wrong shape or scale)."""
    images = np.asarray(representative, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0 or images.shape[-1] != 1:
        raise ValueError(f"representative images must be [n, rows, cols, 1] with n > 0, got {images.shape}")
    if float(images.min()) < 0.0 or float(images.max()) > 1.0:
        raise ValueError("representative images must be scaled to [0, 1], as the model's input is")
    return images


def tensor_dtypes(flatbuffer: bytes) -> dict[str, int]:
    """How many tensors of each dtype the flatbuffer holds, e.g. ``{"int8": 40, "float32": 3}``.

    The cheap way to tell an int8 file from a float32 one without trusting its metadata.
    """
    interp = Interpreter(model_content=flatbuffer)
    counts: dict[str, int] = {}
    for detail in interp.get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts


class LiteRTModel:
    """A LiteRT interpreter that runs batches of any size (resizing its input when the size changes)."""

    def __init__(self, flatbuffer: bytes, num_threads: int | None = None) -> None:
        self._interp = Interpreter(model_content=flatbuffer, num_threads=num_threads)
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self._batch = -1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self._in["shape_signature"])

    @property
    def io_dtypes(self) -> tuple[str, str]:
        """(input dtype, output dtype): float32 for both, quantised file or not."""
        return np.dtype(self._in["dtype"]).name, np.dtype(self._out["dtype"]).name

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities for float32 pixels ``[n, rows, cols, 1]`` in [0, 1]."""
        outs = []
        for start in range(0, len(x), batch_size):
            chunk = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
            if len(chunk) != self._batch:
                self._interp.resize_tensor_input(self._in["index"], list(chunk.shape), strict=True)
                self._interp.allocate_tensors()
                self._batch = len(chunk)
            self._interp.set_tensor(self._in["index"], chunk)
            self._interp.invoke()
            outs.append(self._interp.get_tensor(self._out["index"]).copy())
        return np.concatenate(outs)

"""Keras -> LiteRT (TFLite) conversion and batched LiteRT inference.

The flatbuffer takes float32 ``[batch, rows, cols, 1]`` pixels in [0, 1] with a resizable batch
dimension and returns float32 ``[batch, num_classes]`` probabilities, like the Keras model.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter


def to_tflite(model: keras.Model) -> bytes:
    """Convert with default float32 kernels (no quantisation: outputs must match Keras)."""
    # from_keras_model goes through a SavedModel export, which freezes the variables correctly;
    # converting a hand-made concrete function here produced NaN outputs (uninitialised variables).
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return bytes(converter.convert())


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

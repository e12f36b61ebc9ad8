"""The compact residual CNN, its inference wrapper (softmax, optional flip averaging) and a FLOP count.

Everything the predictor needs beyond "pixels / 255" lives inside the graph: input standardisation and,
when enabled, horizontal-flip test-time averaging. Only built-in Keras layers are used, so
``keras.models.load_model("model.keras")`` works anywhere without custom objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

# Fashion-MNIST training-set pixel statistics on the [0, 1] scale; a fixed standardisation in the graph.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530


def _conv_bn(x: keras.KerasTensor, filters: int, stride: int, name: str, relu: bool = True) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _residual_block(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """Two 3x3 conv-BN layers around an identity shortcut (same width and resolution in and out)."""
    filters = int(x.shape[-1])
    y = _conv_bn(x, filters, 1, f"{name}_a")
    y = _conv_bn(y, filters, 1, f"{name}_b", relu=False)
    y = layers.Add(name=f"{name}_add")([y, x])
    return layers.ReLU(name=f"{name}_out")(y)


def build_classifier(image_shape: tuple[int, int], num_classes: int, widths: Sequence[int] = (16, 32, 64),
                     blocks_per_stage: int = 1, dropout: float = 0.0) -> keras.Model:
    """The trainable network: ``[b, rows, cols, 1]`` pixels in [0, 1] -> ``[b, num_classes]`` logits.

    A 3x3 stem at the first width, then one stage per width: later stages open with a strided 3x3
    conv-BN-ReLU that halves the resolution and widens, then residual blocks; global average pooling
    and a linear classifier close it.
    """
    rows, cols = image_shape
    inputs = keras.Input((rows, cols, 1), name="pixels")
    x = layers.Rescaling(1.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="standardise")(inputs)
    x = _conv_bn(x, widths[0], 1, "stem")
    for stage, width in enumerate(widths):
        if stage > 0:
            x = _conv_bn(x, width, 2, f"s{stage + 1}_down")
        for block in range(blocks_per_stage):
            x = _residual_block(x, f"s{stage + 1}b{block + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="fashion_cnn_core")


def build_inference_model(classifier: keras.Model, flip_tta: bool) -> keras.Model:
    """Wrap the classifier so it outputs probabilities; with ``flip_tta`` it averages x and its mirror.

    The mirror is a frozen 0/1 ``Dense`` over the column axis (an exact permutation), which keeps the
    saved model free of Lambda layers and custom classes.
    """
    rows, cols, _ = classifier.input_shape[1:]
    inputs = keras.Input((rows, cols, 1), name="pixels")
    probs = layers.Softmax(name="softmax")(classifier(inputs))
    if flip_tta:
        flat = layers.Reshape((rows, cols), name="to_rows")(inputs)
        mirror = layers.Dense(cols, use_bias=False, trainable=False, name="mirror_columns")
        flipped = mirror(flat)
        mirror.set_weights([np.eye(cols, dtype="float32")[::-1].copy()])
        flipped = layers.Reshape((rows, cols, 1), name="to_image")(flipped)
        probs_flipped = layers.Softmax(name="softmax_flipped")(classifier(flipped))
        probs = layers.Average(name="flip_average")([probs, probs_flipped])
    return keras.Model(inputs, probs, name="fashion_cnn")


def count_flops(model: keras.Model) -> int:
    """Floating-point operations (2 x multiply-adds) of one image through conv and dense layers.

    Batch norm, activations and pooling are left out (batch norm folds into the convolutions at export).
    A nested model called twice (flip averaging) is counted twice.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            calls = len(layer._inbound_nodes) if hasattr(layer, "_inbound_nodes") else 1
            total += count_flops(layer) * max(1, calls)
        elif isinstance(layer, layers.Conv2D):
            out_shape = layer.output.shape  # (b, h, w, c)
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += 2 * int(out_shape[1]) * int(out_shape[2]) * kh * kw * int(cin) * layer.filters
        elif isinstance(layer, layers.Dense):
            cin = int(layer.input.shape[-1])
            positions = int(np.prod(layer.input.shape[1:-1])) if len(layer.input.shape) > 2 else 1
            total += 2 * positions * cin * layer.units
    return total

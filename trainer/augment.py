"""Batch-wise training augmentation in TensorFlow ops: flips, small shifts, random erasing.

It runs inside the ``tf.data`` pipeline on whole batches (vectorised), so it costs little next to the
convolutions on a 2-core machine.
"""

from __future__ import annotations

import tensorflow as tf

from trainer.config import AugmentConfig


def _shift(x: tf.Tensor, max_shift: int) -> tf.Tensor:
    """Translate each image by a whole number of pixels in [-max_shift, max_shift], zero fill."""
    b = tf.shape(x)[0]
    d = tf.cast(tf.random.uniform((b, 2), -max_shift, max_shift + 1, dtype=tf.int32), tf.float32)
    ones, zeros = tf.ones((b, 1)), tf.zeros((b, 1))
    # Projective transform rows [a0 a1 a2 b0 b1 b2 c0 c1]: output (x, y) samples input (x + dx, y + dy).
    transforms = tf.concat([ones, zeros, d[:, :1], zeros, ones, d[:, 1:], zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation="NEAREST", fill_mode="CONSTANT")


def _erase(x: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Random erasing (Zhong et al. 2017): replace one random rectangle per image with noise."""
    shape = tf.shape(x)
    b, h, w = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    area = tf.random.uniform((b,), *cfg.erase_area) * h * w
    log_lo, log_hi = tf.math.log(cfg.erase_aspect[0]), tf.math.log(cfg.erase_aspect[1])
    aspect = tf.exp(tf.random.uniform((b,), log_lo, log_hi))
    eh = tf.minimum(tf.round(tf.sqrt(area * aspect)), h)
    ew = tf.minimum(tf.round(tf.sqrt(area / aspect)), w)
    top = tf.floor(tf.random.uniform((b,)) * (h - eh + 1))
    left = tf.floor(tf.random.uniform((b,)) * (w - ew + 1))
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))
    apply = tf.random.uniform((b, 1, 1)) < cfg.erase_prob
    mask = tf.logical_and(inside, apply)[..., None]
    return tf.where(mask, tf.random.uniform(tf.shape(x)), x)


def augment_batch(x: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """Augment a float batch ``[b, rows, cols, 1]`` in [0, 1]."""
    if cfg.flip:
        flip = tf.random.uniform((tf.shape(x)[0], 1, 1, 1)) < 0.5
        x = tf.where(flip, tf.reverse(x, axis=[2]), x)
    if cfg.max_shift > 0:
        x = _shift(x, cfg.max_shift)
    if cfg.erase_prob > 0:
        x = _erase(x, cfg)
    return x

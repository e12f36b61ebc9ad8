"""The network: size and cost within budget, flip averaging exact, saved without custom objects."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from trainer.config import TrainConfig
from trainer.model import build_classifier, build_inference_model, count_flops


def test_default_network_fits_the_budget() -> None:
    cfg = TrainConfig()
    core = build_classifier((28, 28), 10, cfg.widths, cfg.blocks_per_stage)
    assert core.count_params() <= 1_000_000
    assert core.count_params() == 121_946
    # 12.76 M multiply-adds: stem, one residual block per stage, two strided convs, the classifier.
    assert round(count_flops(core) / 1e6, 1) == 25.5
    with_tta = build_inference_model(core, flip_tta=True)
    assert 2 * count_flops(core) < count_flops(with_tta) < 2 * count_flops(core) + 100_000


def test_shape_and_classes_follow_the_data() -> None:
    core = build_classifier((20, 32), 4, (8, 16))
    model = build_inference_model(core, flip_tta=True)
    out = model.predict(np.random.default_rng(0).random((3, 20, 32, 1), dtype=np.float32), verbose=0)
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_flip_averaging_is_exact_and_mirror_invariant(tmp_path: Path) -> None:
    core = build_classifier((28, 28), 10, (8, 16, 32))
    x = np.random.default_rng(1).random((4, 28, 28, 1), dtype=np.float32)
    # Break batch-norm's identity start so the two halves of the average really differ.
    core.set_weights([w + np.random.default_rng(2).normal(0, 0.1, w.shape).astype(w.dtype)
                      for w in core.get_weights()])
    model = build_inference_model(core, flip_tta=True)
    p = model.predict(x, verbose=0)
    p_mirror = model.predict(x[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(p, p_mirror, atol=1e-6)
    single = keras.ops.softmax(core(x)).numpy()
    mirrored = keras.ops.softmax(core(x[:, :, ::-1].copy())).numpy()
    np.testing.assert_allclose(p, (single + mirrored) / 2, atol=1e-6)
    # Plain keras.models.load_model, as the predictor's Keras runtime does it: no custom objects.
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), p, atol=1e-6)

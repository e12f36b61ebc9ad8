"""One-cycle learning-rate schedule (Smith & Topin 2017), a pure function of the optimizer step.

Being a function of the step alone is what makes a resumed run follow the same schedule.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="trainer")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine warm-up from ``max_lr / div`` to ``max_lr``, then cosine decay to ``max_lr / final_div``."""

    def __init__(self, max_lr: float, total_steps: int, warmup_fraction: float = 0.25,
                 div: float = 25.0, final_div: float = 1e4) -> None:
        if total_steps < 1:
            raise ValueError("total_steps must be positive")
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)
        self.div = float(div)
        self.final_div = float(final_div)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        warm = max(1.0, self.total_steps * self.warmup_fraction)
        start, peak, end = self.max_lr / self.div, self.max_lr, self.max_lr / self.final_div
        up = ops.clip(step / warm, 0.0, 1.0)
        down = ops.clip((step - warm) / max(1.0, self.total_steps - warm), 0.0, 1.0)
        lr_up = start + (peak - start) * (1.0 - ops.cos(math.pi * up)) / 2.0
        lr_down = end + (peak - end) * (1.0 + ops.cos(math.pi * down)) / 2.0
        return ops.where(step < warm, lr_up, lr_down)

    def get_config(self) -> dict[str, Any]:
        return {"max_lr": self.max_lr, "total_steps": self.total_steps,
                "warmup_fraction": self.warmup_fraction, "div": self.div, "final_div": self.final_div}


@keras.saving.register_keras_serializable(package="trainer")
class AdamWKernelDecay(keras.optimizers.AdamW):
    """AdamW that decays only kernels, not batch-norm scales/offsets or biases.

    The exclusion is set up in ``__init__``, so a checkpoint reloaded with ``load_model`` keeps it
    (``exclude_from_weight_decay`` itself is not part of the saved optimizer config).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])

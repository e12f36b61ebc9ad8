"""Every training hyperparameter as one named, documented value (the CLI fills it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Fields that only change how the trained weights are exported, so a finished run can be re-exported
# with other values (the checkpoint's fingerprint ignores them).
EXPORT_ONLY = frozenset({"flip_tta", "quantize"})


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise; the defaults are the calibrated Fashion-MNIST recipe."""

    flip: bool = True
    max_shift: int = 2
    erase_prob: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.25)
    erase_aspect: tuple[float, float] = (0.3, 3.3)


def default_checkpoint_root() -> Path:
    """``~/.cache/fashion-pipeline/checkpoints``: outside any git tree."""
    return Path.home() / ".cache" / "fashion-pipeline" / "checkpoints"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one run. The defaults produced the bundled model (see models/README.md)."""

    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = 1
    dropout: float = 0.0
    epochs: int = 60
    batch_size: int = 128
    max_lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.25
    label_smoothing: float = 0.1
    val_fraction: float = 1 / 15
    patience: int = 10
    # One-cycle runs keep improving while the learning rate anneals, and the validation accuracy is noisy
    # at the peak rate: patience starts counting at min_epochs at the earliest.
    min_epochs: int = 30
    seed: int = 1234
    flip_tta: bool = True
    # Serve an int8 flatbuffer (weights and activations, calibrated on training images): about 3.5x the
    # float32 throughput on this machine at the same accuracy. Export checks it against Keras.
    quantize: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive integers, got {self.widths}")
        if self.epochs < 1 or self.batch_size < 1 or self.blocks_per_stage < 1:
            raise ValueError("epochs, batch_size and blocks_per_stage must be positive")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("label_smoothing and dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Short hash of everything that changes the trained weights (a checkpoint must match it)."""
        relevant = {k: v for k, v in self.to_dict().items() if k not in EXPORT_ONLY}
        blob = json.dumps(relevant, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

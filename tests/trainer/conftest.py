"""A short real training run shared by the trainer tests that need a trained model."""

from __future__ import annotations

import time

import numpy as np
import pytest
from trainer_helpers import OFFICIAL_DIR, SmokeRun

from trainer.config import TrainConfig
from trainer.data.dataset import stratified_split
from trainer.data.idx import load_official
from trainer.train import train


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """12,000 official training images, a narrow network, 4 epochs: about 30 s on 2 idle cores."""
    full = load_official(OFFICIAL_DIR, "train")
    subset = full.subset(np.arange(12000))
    cfg = TrainConfig(widths=(8, 16, 32), epochs=4, batch_size=128, val_fraction=0.1, min_epochs=4)
    tr, va = stratified_split(subset, cfg.val_fraction, cfg.seed)
    run_dir = tmp_path_factory.mktemp("smoke-run")
    start, cpu_start = time.monotonic(), time.process_time()
    result = train(tr, va, cfg, run_dir, log_every=0)
    seconds, cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
    test = load_official(OFFICIAL_DIR, "test")
    return SmokeRun(cfg, tr, va, test.subset(np.arange(2000)), result, run_dir, seconds, cpu_seconds)

"""Training: a short real run learns, checkpoints, and resumes instead of starting over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from trainer_helpers import SmokeRun

from trainer.config import TrainConfig
from trainer.train import BEST_WEIGHTS, LAST_MODEL, STATE_FILE, train


def test_smoke_training_learns_within_a_minute(smoke_run: SmokeRun) -> None:
    r = smoke_run.result
    # About 30 s of wall time (60 CPU-seconds on 2 cores) on an idle machine. CPU time is checked
    # because wall time depends on what else runs on the shared cores.
    assert smoke_run.cpu_seconds < 150, (smoke_run.cpu_seconds, smoke_run.seconds)
    assert r.epochs_run == 4 and len(r.history["val_accuracy"]) == 4
    # Chance is 0.10. Four epochs do not converge, so the figure moves with the CPU's kernels even with
    # fixed seeds: 0.79 on the development machine, 0.71 on a CI machine. 0.6 still proves learning.
    assert r.best_val_accuracy > 0.6
    assert r.history["loss"][-1] < r.history["loss"][0]
    probs = r.classifier.predict(smoke_run.test.images[..., None] / 255.0, verbose=0)
    assert (probs.argmax(1) == smoke_run.test.labels).mean() > 0.6  # on unseen test images too
    for name in (STATE_FILE, LAST_MODEL, BEST_WEIGHTS):
        assert (smoke_run.run_dir / name).exists()


def test_finished_run_is_returned_not_retrained(smoke_run: SmokeRun) -> None:
    again = train(smoke_run.train, smoke_run.val, smoke_run.cfg, smoke_run.run_dir, log_every=0)
    assert again.history == smoke_run.result.history
    x = smoke_run.val.images[:64, ..., None] / 255.0
    np.testing.assert_allclose(again.classifier.predict(x, verbose=0),
                               smoke_run.result.classifier.predict(x, verbose=0), atol=1e-5)


def test_interrupted_run_resumes_after_its_last_checkpoint(smoke_run: SmokeRun, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # Recreate the checkpoint directory as a run killed after epoch 3 of 4 leaves it: last.keras and
    # state.json written at the end of epoch 3. (The copied last.keras is epoch 4's model; what is
    # checked here is that training continues from the recorded epoch with the saved optimizer.)
    run = tmp_path / "run"
    shutil.copytree(smoke_run.run_dir, run)
    state = json.loads((run / STATE_FILE).read_text())
    state.update(epoch=3, finished=False, stopped_early=False,
                 history={k: v[:3] for k, v in state["history"].items()})
    (run / STATE_FILE).write_text(json.dumps(state))
    resumed = train(smoke_run.train, smoke_run.val, smoke_run.cfg, run, log_every=0)
    assert "resuming" in capsys.readouterr().out
    assert resumed.epochs_run == 4
    assert len(resumed.history["loss"]) == 4  # exactly one more epoch was trained
    assert resumed.history["loss"][:3] == state["history"]["loss"]
    assert json.loads((run / STATE_FILE).read_text())["finished"] is True


def test_checkpoint_of_another_configuration_is_refused(smoke_run: SmokeRun) -> None:
    other = TrainConfig(widths=(8, 16, 32), epochs=5, batch_size=128, val_fraction=0.1, min_epochs=4)
    with pytest.raises(ValueError, match="different configuration"):
        train(smoke_run.train, smoke_run.val, other, smoke_run.run_dir, log_every=0)

"""The training loop: tf.data input with augmentation, AdamW one-cycle, resumable checkpoints.

A run lives in its checkpoint directory (outside git). After every epoch it saves the full model with
its optimizer state (``last.keras``), the best-so-far weights on the validation split
(``best.weights.h5``) and ``state.json``; running the same command again continues from there, and a
finished run just returns its result. Early stopping watches validation accuracy only; the test split
is never looked at here.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer.augment import augment_batch
from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.model import build_classifier
from trainer.schedule import AdamWKernelDecay, OneCycle

STATE_FILE = "state.json"
LAST_MODEL = "last.keras"
BEST_WEIGHTS = "best.weights.h5"


@dataclass
class TrainResult:
    """The trained classifier (best validation weights) and what happened on the way."""

    classifier: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    train_seconds: float
    stopped_early: bool


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _to_input(images: np.ndarray) -> np.ndarray:
    return images[..., None]


def make_train_dataset(data: Dataset, cfg: TrainConfig, seed: int) -> tf.data.Dataset:
    """Shuffled, batched, augmented ``(pixels in [0, 1], one-hot labels)`` batches."""
    ds = tf.data.Dataset.from_tensor_slices((_to_input(data.images), data.labels))
    ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True).batch(cfg.batch_size)
    n = data.num_classes
    aug = cfg.augment

    def prepare(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return augment_batch(tf.cast(x, tf.float32) / 255.0, aug), tf.one_hot(y, n)

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


def make_eval_dataset(data: Dataset, batch_size: int = 512) -> tf.data.Dataset:
    """Un-augmented batches for validation."""
    n = data.num_classes
    ds = tf.data.Dataset.from_tensor_slices((_to_input(data.images), data.labels)).batch(batch_size)
    return ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, tf.one_hot(y, n))).cache()


class _RunKeeper(keras.callbacks.Callback):
    """Checkpoints each epoch, tracks the best validation accuracy, stops early, reports progress."""

    def __init__(self, run_dir: Path, state: dict[str, Any], cfg: TrainConfig, steps_per_epoch: int,
                 log_every: int) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.cfg = cfg
        self.steps = steps_per_epoch
        self.log_every = log_every
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.log_every and (batch + 1) % self.log_every == 0:
            rate = (time.monotonic() - self._epoch_start) / (batch + 1)
            _log(f"  step {batch + 1}/{self.steps} loss={(logs or {}).get('loss', float('nan')):.4f} "
                 f"({rate * 1000:.0f} ms/step)")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        seconds = time.monotonic() - self._epoch_start
        opt = self.model.optimizer
        logs["lr"] = float(opt.learning_rate.numpy()) if hasattr(opt.learning_rate, "numpy") else float("nan")
        st = self.state
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            st["history"].setdefault(key, []).append(float(logs.get(key, float("nan"))))
        st["history"].setdefault("seconds", []).append(seconds)
        st["train_seconds"] += seconds
        st["epoch"] = epoch + 1
        val_acc = float(logs.get("val_accuracy", 0.0))
        improved = val_acc > st["best_val_accuracy"]
        if improved:
            st["best_val_accuracy"], st["best_epoch"], st["wait"] = val_acc, epoch + 1, 0
            self.model.save_weights(self.run_dir / BEST_WEIGHTS)
        else:
            st["wait"] += 1
        # Patience counts from the later of the best epoch and min_epochs: epochs at the schedule's peak,
        # where validation accuracy is noisy, never use it up.
        if st["epoch"] - max(st["best_epoch"], self.cfg.min_epochs) >= self.cfg.patience:
            st["stopped_early"] = True
            self.model.stop_training = True
        if st["epoch"] >= self.cfg.epochs or st["stopped_early"]:
            st["finished"] = True
        # Model first, state last: a state file never points at a checkpoint that was not written.
        tmp = self.run_dir / ("tmp-" + LAST_MODEL)
        self.model.save(tmp)
        os.replace(tmp, self.run_dir / LAST_MODEL)
        _write_json(self.run_dir / STATE_FILE, st)
        remaining = (self.cfg.epochs - st["epoch"]) * (st["train_seconds"] / max(1, len(st["history"]["seconds"])))
        _log(f"epoch {epoch + 1}/{self.cfg.epochs} {seconds:.0f}s loss={logs.get('loss', 0):.4f} "
             f"acc={logs.get('accuracy', 0):.4f} val_loss={logs.get('val_loss', 0):.4f} "
             f"val_acc={val_acc:.4f}{' *' if improved else ''} lr={logs['lr']:.2e} "
             f"best={st['best_val_accuracy']:.4f}@{st['best_epoch']} eta={remaining / 60:.0f}min")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _new_state(cfg: TrainConfig, train: Dataset, val: Dataset) -> dict[str, Any]:
    return {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict(),
            "data": {"source": train.source, "train": len(train), "val": len(val),
                     "image_shape": list(train.image_shape), "class_names": list(train.class_names)},
            "epoch": 0, "best_epoch": 0, "best_val_accuracy": -1.0, "wait": 0, "train_seconds": 0.0,
            "stopped_early": False, "finished": False, "history": {}}


def _compile(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int) -> None:
    schedule = OneCycle(cfg.max_lr, cfg.epochs * steps_per_epoch, cfg.warmup_fraction)
    opt = AdamWKernelDecay(learning_rate=schedule, weight_decay=cfg.weight_decay)
    model.compile(optimizer=opt,
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


def train(train_data: Dataset, val_data: Dataset, cfg: TrainConfig, run_dir: str | os.PathLike[str],
          log_every: int = 100, verbose: bool = True) -> TrainResult:
    """Train (or resume, or return the finished run in ``run_dir``) and give back the best classifier."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    if train_data.image_shape != val_data.image_shape or train_data.class_names != val_data.class_names:
        raise ValueError("train and validation data disagree on image shape or classes")
    steps = int(np.ceil(len(train_data) / cfg.batch_size))
    state_path = run / STATE_FILE
    state = _new_state(cfg, train_data, val_data)
    model: keras.Model
    if state_path.exists() and (run / LAST_MODEL).exists():
        saved = json.loads(state_path.read_text())
        if saved.get("fingerprint") != state["fingerprint"] or saved.get("data") != state["data"]:
            raise ValueError(f"{run} holds a run with a different configuration or data; "
                             "choose another --run name or delete that directory")
        state = saved
        model = keras.models.load_model(run / LAST_MODEL)
        verb = "found the finished run" if state["finished"] else "resuming"
        _log(f"{verb} {run} after epoch {state['epoch']} (best val_acc {state['best_val_accuracy']:.4f})")
    else:
        keras.utils.set_random_seed(cfg.seed)
        model = build_classifier(train_data.image_shape, train_data.num_classes, cfg.widths,
                                 cfg.blocks_per_stage, cfg.dropout)
        _compile(model, cfg, steps)
        _log(f"new run {run}: {model.count_params():,} parameters, {len(train_data)} train / "
             f"{len(val_data)} val images, {steps} steps/epoch, TF threads: "
             f"{os.cpu_count()} cores visible")
    if not state["finished"]:
        # Seed per epoch offset so a resumed run does not replay the first epochs' random draws.
        keras.utils.set_random_seed(cfg.seed + state["epoch"])
        keeper = _RunKeeper(run, state, cfg, steps, log_every if verbose else 0)
        model.fit(make_train_dataset(train_data, cfg, cfg.seed + state["epoch"]),
                  validation_data=make_eval_dataset(val_data), epochs=cfg.epochs,
                  initial_epoch=state["epoch"], callbacks=[keeper], shuffle=False, verbose=0)
        state = keeper.state
        if not state["finished"]:  # fit returned without reaching the end (should not happen)
            state["finished"] = True
            _write_json(state_path, state)
    if (run / BEST_WEIGHTS).exists():
        model.load_weights(run / BEST_WEIGHTS)
    _log(f"training done: best val_acc {state['best_val_accuracy']:.4f} at epoch {state['best_epoch']}, "
         f"{state['train_seconds'] / 60:.1f} min of training")
    return TrainResult(model, state["history"], state["best_epoch"], state["best_val_accuracy"],
                       state["epoch"], state["train_seconds"], state["stopped_early"])

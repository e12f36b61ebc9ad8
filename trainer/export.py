"""Export a trained classifier: model.keras, model.tflite, metrics, figures and the manifest.

The exported graph is the inference model (softmax, and flip averaging when enabled), evaluated once
with Keras and once with LiteRT on the held-out data; the LiteRT result is what the manifest reports,
because that flatbuffer is what the predictor serves. Export refuses to finish when the two disagree.

By default the flatbuffer is int8 (weights and activations, calibrated on training images), which
serves about 3.5x faster; its probabilities then differ from Keras by quantisation noise, so it is
checked on what users see instead: the same predicted class and the same accuracy. A float32 export
(``quantize=False``) must still match Keras to rounding.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from common.errors import PipelineError
from common.model_store import sha256_file
from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.evaluate import classification_metrics
from trainer.litert import LiteRTModel, calibration_images, to_tflite
from trainer.model import build_inference_model, count_flops
from trainer.plots import plot_confusion_matrix, plot_training_curves
from trainer.storage import MANIFEST, publish_folder
from trainer.train import TrainResult

FORMAT_VERSION = 1
# The headline metrics copied into the manifest (the rest stay in metrics.json, which is not served).
MANIFEST_METRICS = ("test_accuracy", "test_accuracy_keras", "quantization", "litert_vs_keras", "params",
                    "mflops_per_image", "evaluated_on")


@dataclass(frozen=True)
class ExportChecks:
    """How closely the exported files must follow the trained Keras model, or export refuses to finish.

    A float32 flatbuffer computes the same graph as Keras with other kernels: probabilities may differ
    by rounding only. An int8 file rounds every activation to one of 256 levels, so probabilities move
    by about 1e-2 and near-ties may flip; it is held to what users see instead: the same class for at
    least 99% of images and an accuracy within half a percentage point of Keras's (the bundled model:
    99.67% and +0.03 point). Weak models with many near-ties (the tests' 4-epoch, 76% smoke run sits at
    about 99.1%) may need a looser agreement, or ``--no-quantize``.
    """

    max_prob_diff: float = 1e-4
    min_int8_agreement: float = 0.99
    max_int8_accuracy_gap: float = 0.005


class ExportError(PipelineError):
    """The exported artifacts do not behave like the trained model."""

    code = "export_failed"


@dataclass(frozen=True)
class ExportInfo:
    """Where the artifacts went and what the manifest says."""

    uris: list[str]
    manifest: dict[str, Any]


def _pixels(data: Dataset) -> np.ndarray:
    return (data.images.astype(np.float32) / 255.0)[..., None]


def export_model(result: TrainResult, cfg: TrainConfig, eval_data: Dataset, destination: str, *,
                 calibration: Dataset | None = None, evaluated_on: str = "test", model_name: str = "fashion-cnn",
                 extra_metrics: dict[str, Any] | None = None, checks: ExportChecks | None = None) -> ExportInfo:
    """Evaluate on ``eval_data`` and write every artifact to ``destination`` (folder or gs:// prefix).

    With ``cfg.quantize`` the flatbuffer is int8, calibrated on images drawn from ``calibration``,
    which must be training data (never ``eval_data``: that would leak the test split into the file).
    """
    if cfg.quantize and calibration is None:
        raise ValueError("an int8 export needs calibration=<training data>; pass it, or set quantize=False")
    # An uncompiled copy: the saved file must not reference the training optimizer or schedule, so
    # that plain keras.models.load_model opens it where trainer is not installed.
    core = keras.Model.from_config(result.classifier.get_config())  # (clone_model would copy the compile)
    core.set_weights(result.classifier.get_weights())
    inference = build_inference_model(core, cfg.flip_tta)
    x = _pixels(eval_data)
    staging = Path(tempfile.mkdtemp(prefix="fashion-export-"))
    try:
        keras_path = staging / "model.keras"
        inference.save(keras_path)
        tflite_path = staging / "model.tflite"
        representative, calibration_info = None, None
        if cfg.quantize and calibration is not None:
            representative = calibration_images(calibration, seed=cfg.seed)
            calibration_info = {"source": calibration.source, "images": len(representative), "seed": cfg.seed}
        tflite_path.write_bytes(to_tflite(inference, representative))

        t0 = time.perf_counter()
        probs_keras = inference.predict(x, batch_size=512, verbose=0)
        keras_s = time.perf_counter() - t0
        # Check the artifacts as files, exactly as they will be served.
        probs_lite = LiteRTModel(tflite_path.read_bytes()).predict(x)
        reloaded = keras.models.load_model(keras_path).predict(x[:512], batch_size=512, verbose=0)
        diff = float(np.abs(probs_lite - probs_keras).max())
        reload_diff = float(np.abs(reloaded - probs_keras[:512]).max())
        agreement = float((probs_lite.argmax(1) == probs_keras.argmax(1)).mean())
        lite = classification_metrics(eval_data.labels, probs_lite, eval_data.class_names)
        keras_acc = classification_metrics(eval_data.labels, probs_keras, eval_data.class_names)["accuracy"]
        _check_agreement(checks or ExportChecks(), representative is not None, diff, reload_diff, agreement,
                         lite["accuracy"], keras_acc)
        params = int(result.classifier.count_params())
        mflops = count_flops(inference) / 1e6
        metrics: dict[str, Any] = {
            "evaluated_on": evaluated_on,
            "eval_source": eval_data.source,
            "eval_count": lite["count"],
            "test_accuracy": round(lite["accuracy"], 5),
            "test_accuracy_keras": round(keras_acc, 5),
            "quantization": "int8" if representative is not None else "none",
            "calibration": calibration_info,
            "litert_vs_keras": {"max_abs_prob_diff": diff, "argmax_agreement": agreement},
            "per_class": lite["per_class"],
            "confusion_matrix": lite["confusion_matrix"],
            "class_names": list(eval_data.class_names),
            "params": params,
            "mflops_per_image": round(mflops, 2),
            "mflops_per_image_single_pass": round(count_flops(result.classifier) / 1e6, 2),
            "flip_tta": cfg.flip_tta,
            "training_seconds": round(result.train_seconds, 1),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "best_val_accuracy": round(result.best_val_accuracy, 5),
            "stopped_early": result.stopped_early,
            "keras_eval_seconds": round(keras_s, 2),
            "config": cfg.to_dict(),
            "history": result.history,
        }
        metrics.update(extra_metrics or {})
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))

        acc_label = f"{evaluated_on} accuracy {lite['accuracy']:.2%}"
        plot_confusion_matrix(np.asarray(lite["confusion_matrix"]), eval_data.class_names,
                              staging / "confusion_matrix.png", f"{model_name}: {acc_label} (LiteRT)")
        plot_training_curves(result.history, staging / "training_curves.png",
                             f"{model_name}: {params:,} params, {mflops:.1f} MFLOPs/image, {acc_label}")

        manifest = _manifest(staging, eval_data, model_name, metrics)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        uris = publish_folder(staging, destination)
        return ExportInfo(uris, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _manifest(folder: Path, data: Dataset, model_name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest agreed with the predictor (see docs in the predict helper's model_store)."""
    files: dict[str, dict[str, Any]] = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST
    }
    now = datetime.now(UTC)
    rows, cols = data.image_shape
    return {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "version": f"{now:%Y-%m-%dT%H%MZ}-{files['model.tflite']['sha256'][:6]}",
        "created_at": f"{now:%Y-%m-%dT%H:%M:%SZ}",
        "class_names": list(data.class_names),
        "input_shape": [rows, cols, 1],
        "input_dtype": "float32",
        "preprocessing": {"scale": 255.0, "polarity": "light_on_dark"},
        "files": files,
        "metrics": {key: metrics[key] for key in MANIFEST_METRICS},
    }


def _check_agreement(checks: ExportChecks, quantized: bool, diff: float, reload_diff: float, agreement: float,
                     lite_acc: float, keras_acc: float) -> None:
    """Raise ExportError unless the files behave like the trained model (see ExportChecks)."""
    if reload_diff > checks.max_prob_diff:
        raise ExportError(f"the reloaded model.keras disagrees with the trained model: max |dp| "
                          f"{reload_diff:.2e} (limit {checks.max_prob_diff:g})")
    if not quantized:
        if diff > checks.max_prob_diff:
            raise ExportError(f"the float32 model.tflite disagrees with Keras: max |dp| {diff:.2e} "
                              f"(limit {checks.max_prob_diff:g})")
        return
    if agreement < checks.min_int8_agreement or abs(keras_acc - lite_acc) > checks.max_int8_accuracy_gap:
        raise ExportError(f"the int8 model.tflite strays from Keras: same class for {agreement:.2%} of images "
                          f"(need {checks.min_int8_agreement:.0%}), accuracy {lite_acc:.2%} vs Keras "
                          f"{keras_acc:.2%} (may differ by at most {checks.max_int8_accuracy_gap:.1%}); export "
                          f"float32 with --no-quantize instead")

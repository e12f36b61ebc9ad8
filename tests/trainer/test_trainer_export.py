"""Export: every artifact written, checksums right, LiteRT agreeing with Keras, gs:// round trip.

The same smoke run is exported twice, as int8 (the default) and as float32 (``quantize=False``).
The smoke model (4 epochs, about 76% accurate, many near-ties) keeps Keras's class for about 99.1%
of images once quantised, right at the default limit of 99%, so its int8 exports are checked against
looser limits (SMOKE_CHECKS); the bundled model's tests hold the real model to the defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from trainer_helpers import SmokeRun

from trainer.data.dataset import Dataset
from trainer.export import ExportChecks, ExportError, export_model
from trainer.litert import LiteRTModel, tensor_dtypes

SMOKE_CHECKS = ExportChecks(min_int8_agreement=0.98, max_int8_accuracy_gap=0.01)
ARTIFACTS = {"model.keras", "model.tflite", "manifest.json", "metrics.json", "confusion_matrix.png",
             "training_curves.png"}


@pytest.fixture(scope="module")
def exported(smoke_run: SmokeRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The default export: int8, calibrated on the smoke run's training images."""
    out = tmp_path_factory.mktemp("export") / "fashion-cnn"
    info = export_model(smoke_run.result, smoke_run.cfg, smoke_run.test, str(out), calibration=smoke_run.train,
                        checks=SMOKE_CHECKS)
    return out, info.manifest


@pytest.fixture(scope="module")
def exported_float(smoke_run: SmokeRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The same weights exported as float32 (``--no-quantize``)."""
    out = tmp_path_factory.mktemp("export-f32") / "fashion-cnn"
    info = export_model(smoke_run.result, replace(smoke_run.cfg, quantize=False), smoke_run.test, str(out))
    return out, info.manifest


def _pixels(data: Dataset) -> np.ndarray:
    return data.images[..., None].astype(np.float32) / 255.0


def test_folder_holds_every_artifact_with_matching_checksums(exported: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = exported
    assert {p.name for p in out.iterdir()} == ARTIFACTS
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert set(manifest["files"]) == ARTIFACTS - {"manifest.json"}
    for name, entry in manifest["files"].items():
        blob = (out / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_manifest_follows_the_agreed_format(exported: tuple[Path, dict[str, Any]], smoke_run: SmokeRun) -> None:
    _, m = exported
    assert m["format_version"] == 1 and m["model_name"] == "fashion-cnn"
    assert m["version"].endswith("-" + m["files"]["model.tflite"]["sha256"][:6])
    assert m["class_names"] == list(smoke_run.test.class_names)
    assert m["input_shape"] == [28, 28, 1] and m["input_dtype"] == "float32"
    assert m["preprocessing"] == {"scale": 255.0, "polarity": "light_on_dark"}
    assert m["metrics"]["params"] == smoke_run.result.classifier.count_params()
    assert m["metrics"]["test_accuracy"] > 0.6  # the smoke run's own accuracy; chance is 0.10


def test_float_litert_matches_keras_and_the_recorded_accuracy(exported_float: tuple[Path, dict[str, Any]],
                                                              smoke_run: SmokeRun) -> None:
    out, manifest = exported_float
    x = _pixels(smoke_run.test)
    lite = LiteRTModel((out / "model.tflite").read_bytes())
    assert lite.input_shape == (-1, 28, 28, 1)  # resizable batch
    assert lite.io_dtypes == ("float32", "float32")
    assert "int8" not in tensor_dtypes((out / "model.tflite").read_bytes())
    p_lite = np.concatenate([lite.predict(x[:1]), lite.predict(x[1:300], batch_size=256)])
    p_keras = keras.models.load_model(out / "model.keras").predict(x[:300], verbose=0)
    np.testing.assert_allclose(p_lite, p_keras, atol=1e-4)
    np.testing.assert_allclose(p_lite.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float((lite.predict(x).argmax(1) == smoke_run.test.labels).mean())
    assert accuracy == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-5)
    assert manifest["metrics"]["quantization"] == "none"
    assert manifest["metrics"]["litert_vs_keras"]["max_abs_prob_diff"] <= 1e-4


def test_int8_litert_agrees_with_keras_and_keeps_the_float_interface(
    exported: tuple[Path, dict[str, Any]], exported_float: tuple[Path, dict[str, Any]], smoke_run: SmokeRun
) -> None:
    out, manifest = exported
    blob = (out / "model.tflite").read_bytes()
    dtypes = tensor_dtypes(blob)
    assert dtypes.get("int8", 0) > dtypes.get("float32", 0), dtypes  # weights and activations are int8
    assert len(blob) < 0.5 * (exported_float[0] / "model.tflite").stat().st_size  # 1-byte weights
    lite = LiteRTModel(blob)
    # The predictor feeds float32 pixels and reads float32 probabilities, whichever file it serves.
    assert lite.input_shape == (-1, 28, 28, 1) and lite.io_dtypes == ("float32", "float32")
    x = _pixels(smoke_run.test)
    p_lite = lite.predict(x)
    p_keras = keras.models.load_model(out / "model.keras").predict(x, batch_size=512, verbose=0)
    # Each of the 10 probabilities is an int8 level (steps of 1/256, averaged over the image and its
    # mirror), so the sum is off by up to about 0.03 (seen: 0.984-1.023); the float export sums to 1.
    np.testing.assert_allclose(p_lite.sum(axis=1), 1.0, atol=0.05)
    agreement = float((p_lite.argmax(1) == p_keras.argmax(1)).mean())
    assert agreement >= SMOKE_CHECKS.min_int8_agreement
    accuracy = float((p_lite.argmax(1) == smoke_run.test.labels).mean())
    keras_accuracy = float((p_keras.argmax(1) == smoke_run.test.labels).mean())
    assert abs(accuracy - keras_accuracy) <= SMOKE_CHECKS.max_int8_accuracy_gap
    metrics = manifest["metrics"]
    assert metrics["quantization"] == "int8"
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-5)
    assert keras_accuracy == pytest.approx(metrics["test_accuracy_keras"], abs=1e-5)
    assert metrics["litert_vs_keras"]["argmax_agreement"] == pytest.approx(agreement)


def test_int8_export_needs_training_images_to_calibrate(smoke_run: SmokeRun, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration"):
        export_model(smoke_run.result, smoke_run.cfg, smoke_run.test, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_int8_export_that_strays_from_keras_is_refused(smoke_run: SmokeRun, tmp_path: Path) -> None:
    # Calibrating on blank images gives activation ranges far too narrow for real garments: the int8
    # file saturates, and export must refuse it rather than publish a model that answers differently.
    train = smoke_run.train
    blank = Dataset(np.zeros_like(train.images[:64]), train.labels[:64], train.class_names, "blank")
    with pytest.raises(ExportError, match="strays from Keras") as info:
        export_model(smoke_run.result, smoke_run.cfg, smoke_run.test.subset(np.arange(500)), str(tmp_path / "out"),
                     calibration=blank, checks=SMOKE_CHECKS)
    assert info.value.code == "export_failed"
    assert not (tmp_path / "out").exists()


def test_keras_file_loads_without_the_trainer_package(exported: tuple[Path, dict[str, Any]]) -> None:
    # The predictor's Keras runtime has only keras: a saved optimizer or schedule class would break it.
    out, _ = exported
    code = ("import sys, keras, numpy as np; m = keras.models.load_model(sys.argv[1]); "
            "print(m.predict(np.zeros((2, 28, 28, 1), 'float32'), verbose=0).shape, "
            "any(k.startswith('trainer') for k in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(out / "model.keras")], capture_output=True, text=True,
                          timeout=120, cwd="/", env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("(2, 10) False")


def test_metrics_file_reports_what_users_need(exported: tuple[Path, dict[str, Any]], smoke_run: SmokeRun) -> None:
    out, _ = exported
    metrics = json.loads((out / "metrics.json").read_text())
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == metrics["eval_count"] == 2000
    assert metrics["test_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-5)
    assert set(metrics["per_class"]["Trouser"]) == {"precision", "recall", "f1", "support"}
    assert metrics["litert_vs_keras"]["argmax_agreement"] >= SMOKE_CHECKS.min_int8_agreement
    assert metrics["quantization"] == "int8"
    # Calibration is recorded (to reproduce the file) and drew on training images, not on the eval data.
    assert metrics["calibration"] == {"source": smoke_run.train.source, "images": 2000, "seed": smoke_run.cfg.seed}
    assert metrics["calibration"]["source"] != metrics["eval_source"]
    for key in ("params", "mflops_per_image", "training_seconds", "best_epoch", "history", "test_accuracy_keras"):
        assert key in metrics


def test_export_to_cloud_storage_and_back(smoke_run: SmokeRun, gcs_emulator: Any, tmp_path: Path) -> None:
    from google.cloud import storage

    client = storage.Client(project="test-project")
    bucket = client.create_bucket(f"models-{uuid.uuid4().hex[:10]}")
    info = export_model(smoke_run.result, smoke_run.cfg, smoke_run.test.subset(np.arange(500)),
                        f"gs://{bucket.name}/models/fashion-cnn", calibration=smoke_run.train, checks=SMOKE_CHECKS)
    blobs = {b.name: b for b in client.list_blobs(bucket.name, prefix="models/fashion-cnn/")}
    assert {n.rsplit("/", 1)[1] for n in blobs} == ARTIFACTS
    assert info.uris[-1] == f"gs://{bucket.name}/models/fashion-cnn/manifest.json"  # manifest last
    manifest = json.loads(blobs["models/fashion-cnn/manifest.json"].download_as_bytes())
    for name, entry in manifest["files"].items():
        local = tmp_path / name
        blobs[f"models/fashion-cnn/{name}"].download_to_filename(str(local))
        assert hashlib.sha256(local.read_bytes()).hexdigest() == entry["sha256"]
    lite = LiteRTModel((tmp_path / "model.tflite").read_bytes())
    assert lite.predict(smoke_run.test.images[:4, ..., None].astype(np.float32) / 255.0).shape == (4, 10)

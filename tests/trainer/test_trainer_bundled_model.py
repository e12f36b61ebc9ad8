"""The bundled model the local pipeline serves: intact, and as accurate as its manifest says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from trainer_helpers import OFFICIAL_DIR

from trainer.data.idx import load_official
from trainer.export import ExportChecks
from trainer.litert import LiteRTModel, tensor_dtypes

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "fashion-cnn"


@pytest.fixture(scope="module")
def manifest() -> dict[str, object]:
    return dict(json.loads((BUNDLED / "manifest.json").read_text()))


def test_files_match_their_manifest(manifest: dict[str, object]) -> None:
    files = manifest["files"]
    assert isinstance(files, dict)
    assert {"model.tflite", "model.keras", "metrics.json"} <= set(files)
    for name, entry in files.items():
        blob = (BUNDLED / name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"], name
        assert len(blob) == entry["bytes"], name


def test_flatbuffer_reaches_its_recorded_accuracy_on_the_official_test_split(manifest: dict[str, object]) -> None:
    test = load_official(OFFICIAL_DIR, "test")
    lite = LiteRTModel((BUNDLED / "model.tflite").read_bytes())
    probs = lite.predict((test.images.astype(np.float32) / 255.0)[..., None], batch_size=500)
    accuracy = float((probs.argmax(axis=1) == test.labels).mean())
    metrics = manifest["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["evaluated_on"] == "test"
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    assert accuracy >= 0.944
    assert metrics["params"] <= 1_000_000


def test_served_flatbuffer_is_int8_behind_a_float32_interface(manifest: dict[str, object]) -> None:
    blob = (BUNDLED / "model.tflite").read_bytes()
    dtypes = tensor_dtypes(blob)
    assert dtypes.get("int8", 0) > dtypes.get("float32", 0), dtypes
    assert LiteRTModel(blob).io_dtypes == ("float32", "float32")  # model_store feeds float32 pixels
    metrics = manifest["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["quantization"] == "int8"


def test_int8_flatbuffer_answers_like_the_float_keras_model(manifest: dict[str, object]) -> None:
    # Recomputed here, not read from the manifest: the export's default limits on the real model.
    limits = ExportChecks()
    test = load_official(OFFICIAL_DIR, "test")
    x = (test.images.astype(np.float32) / 255.0)[..., None]
    p_lite = LiteRTModel((BUNDLED / "model.tflite").read_bytes()).predict(x, batch_size=500)
    p_keras = keras.models.load_model(BUNDLED / "model.keras").predict(x, batch_size=500, verbose=0)
    agreement = float((p_lite.argmax(1) == p_keras.argmax(1)).mean())
    lite_acc, keras_acc = (float((p.argmax(1) == test.labels).mean()) for p in (p_lite, p_keras))
    assert agreement >= limits.min_int8_agreement
    assert abs(lite_acc - keras_acc) <= limits.max_int8_accuracy_gap
    metrics = manifest["metrics"]
    assert isinstance(metrics, dict)
    assert keras_acc == pytest.approx(metrics["test_accuracy_keras"], abs=1e-4)
    assert agreement == pytest.approx(metrics["litert_vs_keras"]["argmax_agreement"], abs=1e-4)

"""The bundled model the local pipeline serves: intact, and as accurate as its manifest says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from trainer_helpers import OFFICIAL_DIR

from trainer.data.idx import load_official
from trainer.litert import LiteRTModel

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
    assert accuracy >= 0.94
    assert metrics["params"] <= 1_000_000

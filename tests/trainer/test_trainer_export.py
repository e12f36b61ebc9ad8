"""Export: every artifact written, checksums right, LiteRT agreeing with Keras, gs:// round trip."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from trainer_helpers import SmokeRun

from trainer.export import export_model
from trainer.litert import LiteRTModel

ARTIFACTS = {"model.keras", "model.tflite", "manifest.json", "metrics.json", "confusion_matrix.png",
             "training_curves.png"}


@pytest.fixture(scope="module")
def exported(smoke_run: SmokeRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("export") / "fashion-cnn"
    info = export_model(smoke_run.result, smoke_run.cfg, smoke_run.test, str(out))
    return out, info.manifest


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


def test_litert_matches_keras_and_the_recorded_accuracy(exported: tuple[Path, dict[str, Any]],
                                                        smoke_run: SmokeRun) -> None:
    out, manifest = exported
    x = smoke_run.test.images[..., None].astype(np.float32) / 255.0
    lite = LiteRTModel((out / "model.tflite").read_bytes())
    assert lite.input_shape == (-1, 28, 28, 1)  # resizable batch
    p_lite = np.concatenate([lite.predict(x[:1]), lite.predict(x[1:300], batch_size=256)])
    p_keras = keras.models.load_model(out / "model.keras").predict(x[:300], verbose=0)
    np.testing.assert_allclose(p_lite, p_keras, atol=1e-4)
    np.testing.assert_allclose(p_lite.sum(axis=1), 1.0, rtol=1e-5)
    accuracy = float((lite.predict(x).argmax(1) == smoke_run.test.labels).mean())
    assert accuracy == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-5)


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


def test_metrics_file_reports_what_users_need(exported: tuple[Path, dict[str, Any]]) -> None:
    out, _ = exported
    metrics = json.loads((out / "metrics.json").read_text())
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == metrics["eval_count"] == 2000
    assert metrics["test_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-5)
    assert set(metrics["per_class"]["Trouser"]) == {"precision", "recall", "f1", "support"}
    assert metrics["litert_vs_keras"]["argmax_agreement"] >= 0.999
    for key in ("params", "mflops_per_image", "training_seconds", "best_epoch", "history"):
        assert key in metrics


def test_export_to_cloud_storage_and_back(smoke_run: SmokeRun, gcs_emulator: Any, tmp_path: Path) -> None:
    from google.cloud import storage

    client = storage.Client(project="test-project")
    bucket = client.create_bucket(f"models-{uuid.uuid4().hex[:10]}")
    info = export_model(smoke_run.result, smoke_run.cfg, smoke_run.test.subset(np.arange(500)),
                        f"gs://{bucket.name}/models/fashion-cnn")
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

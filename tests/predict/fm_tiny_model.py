"""A small real CNN, trained for a few hundred steps on Fashion-MNIST, in the agreed artifact format.

The predict tests must not depend on the bundled model (it is trained by another helper and may
change), so they build their own. Training takes some seconds, so the folder is cached outside the
clone, keyed by this file's content: edit the recipe and the cache refreshes itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from fm_synth import load_idx

from common.model_store import sha256_file

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
CACHE_ROOT = Path(os.path.expanduser("~/.cache/fashion-pipeline-tests"))


def _recipe_hash() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def write_manifest(folder: Path, *, test_accuracy: float, params: int, created: datetime) -> dict[str, object]:
    """Write manifest.json listing every other file in ``folder`` with its SHA-256 and size."""
    files: dict[str, dict[str, object]] = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }
    version = created.strftime("%Y-%m-%dT%H%MZ") + "-" + str(files["model.tflite"]["sha256"])[:6]
    manifest = {
        "format_version": 1,
        "model_name": "fashion-cnn",
        "version": version,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "class_names": CLASS_NAMES,
        "input_shape": [28, 28, 1],
        "input_dtype": "float32",
        "preprocessing": {"scale": 255.0, "polarity": "light_on_dark"},
        "files": files,
        "metrics": {"test_accuracy": test_accuracy, "params": params},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _train(dest: Path, steps: int) -> None:
    import tensorflow as tf  # heavy; only the first test session of a recipe pays for it

    tf.random.set_seed(0)
    x, y = load_idx("train")
    xt, yt = load_idx("t10k")
    x = x[..., None].astype("float32") / 255.0
    xt = xt[..., None].astype("float32") / 255.0
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    batch = 128
    model.fit(x, y, batch_size=batch, epochs=1, steps_per_epoch=steps, verbose=0)
    _, acc = model.evaluate(xt, yt, verbose=0)
    model.save(dest / "model.keras")

    # from_keras_model keeps the batch dimension resizable. (Seen with TF 2.21 + Keras 3: converting a
    # tf.function's concrete function instead produced a flatbuffer that outputs NaN.)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (dest / "model.tflite").write_bytes(converter.convert())
    (dest / "metrics.json").write_text(json.dumps({"test_accuracy": float(acc)}))
    write_manifest(dest, test_accuracy=float(acc), params=int(model.count_params()),
                   created=datetime(2026, 11, 26, 12, 0, tzinfo=UTC))


def tiny_model_dir(steps: int = 400) -> Path:
    """Return a folder holding the trained tiny model, training it once per recipe."""
    dest = CACHE_ROOT / f"tiny-model-{_recipe_hash()}-{steps}"
    if (dest / "manifest.json").exists():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _train(tmp, steps)
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first; theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    for old in CACHE_ROOT.glob("tiny-model-*"):  # models of earlier recipes are never used again
        if old.is_dir() and old.name.split("-")[2] != _recipe_hash():
            shutil.rmtree(old, ignore_errors=True)
    return dest


if __name__ == "__main__":
    print(tiny_model_dir())

"""Benchmark the exported model: LiteRT single-image and batched inference vs Keras ``model.predict``.

    .venv/bin/python bench/bench_model.py [--model-dir models/fashion-cnn] [--seconds 3]

All paths run the same exported graph on real Fashion-MNIST test images in one process, so the
numbers compare directly. The Keras per-image ``model.predict`` baseline is what a naive server
would do per message; a ``tf.function`` call per image and batched Keras are shown for context.

A second table compares the float32 and the int8 flatbuffer of the same weights (accuracy on the
10,000 test images, images/s at batch 1 and 256 on 1 and 2 threads), both measured in this run: the
float32 file is converted from ``model.keras`` here, the int8 one is the served ``model.tflite``
(or, when the folder holds a float32 export, quantised here from 2,000 training images).
The tables are printed and the numbers are written as JSON to ``bench/results/bench_model.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from trainer.data.idx import load_official  # noqa: E402
from trainer.litert import LiteRTModel, calibration_images, to_tflite  # noqa: E402


def _timed_calls(fn: Callable[[], object], seconds: float, min_calls: int, max_calls: int) -> list[float]:
    """Per-call wall times (s) of ``fn``: at least ``min_calls``, stopping after ``seconds`` or ``max_calls``."""
    fn()  # warm-up (allocations, tracing)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _row(name: str, times: list[float], batch: int) -> dict[str, Any]:
    med = statistics.median(times)
    p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
    return {"path": name, "batch": batch, "calls": len(times), "median_ms": med * 1e3, "p95_ms": p95 * 1e3,
            "images_per_s": batch / med}


def run(model_dir: Path, seconds: float) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    manifest = json.loads((model_dir / "manifest.json").read_text())
    x = (load_official(split="test").images.astype(np.float32) / 255.0)[..., None]
    lite = LiteRTModel((model_dir / "model.tflite").read_bytes())
    km = keras.models.load_model(model_dir / "model.keras")
    fn = tf.function(lambda t: km(t, training=False), jit_compile=False)
    one, batch = x[:1], x[:256]
    rng = np.random.default_rng(0)
    rows = [
        _row("LiteRT, 1 image", _timed_calls(lambda: lite.predict(x[rng.integers(0, 10000, 1)]), seconds, 200,
                                              20000), 1),
        _row("LiteRT, batch 256", _timed_calls(lambda: lite.predict(batch), seconds, 10, 2000), 256),
        _row("Keras model.predict, 1 image (baseline)", _timed_calls(lambda: km.predict(one, verbose=0), seconds,
                                                                     20, 500), 1),
        _row("tf.function, 1 image", _timed_calls(lambda: fn(one), seconds, 50, 5000), 1),
        _row("Keras model.predict, batch 256", _timed_calls(lambda: km.predict(batch, verbose=0), seconds, 5,
                                                            500), 256),
    ]
    base = rows[2]["median_ms"]
    for r in rows:
        r["speedup_per_image_vs_baseline"] = base / (r["median_ms"] / r["batch"])
    mflops = float(manifest["metrics"]["mflops_per_image"])
    for r in rows:
        r["gflops_per_s"] = r["images_per_s"] * mflops / 1e3
    # The test split through LiteRT, to show speed and accuracy come from the same artifact.
    labels = load_official(split="test").labels
    t0 = time.perf_counter()
    acc = float((lite.predict(x).argmax(1) == labels).mean())
    full_s = time.perf_counter() - t0
    quantization = str(manifest["metrics"].get("quantization", "none"))
    return {
        "model_dir": str(model_dir), "model_version": manifest["version"], "mflops_per_image": mflops,
        "params": manifest["metrics"]["params"], "served_quantization": quantization,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "load_average_at_start": os.getloadavg()[0], "rows": rows,
        "litert_test_split": {"images": len(x), "seconds": full_s, "accuracy": acc},
        "float32_vs_int8": compare_quantization(model_dir, km, quantization, x, labels, seconds),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def compare_quantization(model_dir: Path, km: Any, served: str, x: np.ndarray, labels: np.ndarray,
                         seconds: float) -> list[dict[str, Any]]:
    """Accuracy and images/s of the float32 and the int8 flatbuffer of the same weights, in one process."""
    files = {"float32": to_tflite(km)}
    if served == "int8":
        files["int8"] = (model_dir / "model.tflite").read_bytes()
    else:
        files["int8"] = to_tflite(km, calibration_images(load_official(split="train"), seed=1234))
    rows = []
    rng = np.random.default_rng(1)
    for name, blob in files.items():
        accuracy = float((LiteRTModel(blob, num_threads=2).predict(x).argmax(1) == labels).mean())
        for threads in (1, 2):
            model = LiteRTModel(blob, num_threads=threads)
            for batch in (1, 256):
                def call(m: LiteRTModel = model, b: int = batch) -> object:
                    start = int(rng.integers(0, len(x) - b + 1))
                    return m.predict(x[start:start + b], batch_size=b)

                times = _timed_calls(call, seconds / 2, 10 if batch > 1 else 200, 20000)
                row = _row(f"LiteRT {name}", times, batch)
                rows.append({**row, "flatbuffer": name, "threads": threads, "accuracy": accuracy,
                             "bytes": len(blob)})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=REPO / "models" / "fashion-cnn",
                   help="exported model folder (default: the bundled model)")
    p.add_argument("--seconds", type=float, default=3.0, help="time budget per path (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_model.json",
                   help="JSON output (default: %(default)s)")
    args = p.parse_args()
    res = run(args.model_dir, args.seconds)
    print(f"model {res['model_version']}: {res['params']:,} params, {res['mflops_per_image']} MFLOPs/image, "
          f"{res['cpu_count']} cores, load average {res['load_average_at_start']:.1f}")
    print(f"{'path':42} {'batch':>5} {'median ms':>10} {'p95 ms':>9} {'images/s':>10} {'x baseline':>10}")
    for r in res["rows"]:
        print(f"{r['path']:42} {r['batch']:>5} {r['median_ms']:>10.3f} {r['p95_ms']:>9.3f} "
              f"{r['images_per_s']:>10.0f} {r['speedup_per_image_vs_baseline']:>10.1f}")
    t = res["litert_test_split"]
    print(f"LiteRT on the {t['images']} test images: {t['seconds']:.2f} s, accuracy {t['accuracy']:.4f} "
          f"(served file: {res['served_quantization']})")
    print()
    print(f"{'flatbuffer':10} {'bytes':>8} {'accuracy':>8} {'threads':>7} {'batch':>5} {'median ms':>10} "
          f"{'images/s':>10}")
    for r in res["float32_vs_int8"]:
        print(f"{r['flatbuffer']:10} {r['bytes']:>8} {r['accuracy']:>8.4f} {r['threads']:>7} {r['batch']:>5} "
              f"{r['median_ms']:>10.3f} {r['images_per_s']:>10.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

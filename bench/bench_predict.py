"""Benchmark the predict side: cold start (LiteRT vs TensorFlow) and LiteRT throughput.

    .venv/bin/python bench/bench_predict.py [--model-dir models/fashion-cnn] [--repeats 5]

Cold start is what a serverless user feels: a new process that imports the predictor, loads the
model (from its folder, and from ``gs://`` on the Cloud Storage emulator, downloaded into an empty
cache each time) and answers one image. It is measured from outside (spawn to answer, with
the interpreter's own start-up) and inside (from the first line of the child to the answer).
Throughput runs on real Fashion-MNIST test images through ``FMPredictor.predict``, so it includes
input checks and result formatting, not only the interpreter. The handler figures add contract
parsing and result building per JSON message (one message per call as on Pub/Sub, 64 as a Kafka
micro-batch). Results are printed and written as JSON to ``bench/results/bench_predict.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from common.predictor import FMPredictor  # noqa: E402
from common.settings import DEFAULT_MODEL_URI, Settings  # noqa: E402
from devservices import StorageEmulator  # noqa: E402
from pipeline.local_run import upload_model  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")

_CHILD = r"""
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
import numpy as np
from common.predictor import FMPredictor
from common.settings import Settings
p = FMPredictor({model!r}, settings=Settings.from_env({{}}, model_runtime={runtime!r}))
t1 = time.perf_counter()
p.predict(np.zeros((1, 28, 28), np.uint8))
t2 = time.perf_counter()
print(f"{{t1 - t0:.4f}} {{t2 - t0:.4f}}")
"""


def cold_start(model: str, runtime: str, repeats: int, env: dict[str, str] | None = None) -> dict[str, float]:
    """Median seconds over ``repeats`` new processes: spawn-to-answer and inside-the-child.

    For a ``gs://`` model each process gets an empty model cache, so each one downloads the model.
    """
    outside, inside, imports = [], [], []
    code = _CHILD.format(repo=str(REPO), model=model, runtime=runtime)
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as cache:
            child_env = {**os.environ, **(env or {}), "MODEL_CACHE_DIR": cache}
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env=child_env)
            outside.append(time.perf_counter() - start)
        t_import, t_first = (float(v) for v in out.stdout.split()[-2:])
        imports.append(t_import)
        inside.append(t_first)
    return {"spawn_to_first_prediction_s": round(statistics.median(outside), 4),
            "in_process_first_prediction_s": round(statistics.median(inside), 4),
            "imports_s": round(statistics.median(imports), 4)}


def test_images(n: int) -> np.ndarray:
    with gzip.open(FASHION, "rb") as fh:
        _, count, rows, cols = struct.unpack(">IIII", fh.read(16))
        return np.frombuffer(fh.read(), np.uint8).reshape(count, rows, cols)[:n]


def throughput(predictor: FMPredictor, images: np.ndarray, batch: int, seconds: float = 2.0) -> dict[str, float]:
    """Images per second and per-call latency for ``batch``-sized calls, over about ``seconds``."""
    predictor.predict(images[:batch])  # warm (tensor resize, caches)
    calls, done, latencies = 0, 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        offset = (calls * batch) % (len(images) - batch + 1)
        t = time.perf_counter()
        predictor.predict(images[offset : offset + batch])
        latencies.append(time.perf_counter() - t)
        calls += 1
        done += batch
    elapsed = time.perf_counter() - start
    return {"batch": batch, "images_per_s": round(done / elapsed, 1),
            "median_call_ms": round(statistics.median(latencies) * 1000, 3)}


def handler_throughput(model_dir: str, images: np.ndarray, per_call: int, seconds: float = 2.0) -> dict[str, float]:
    """JSON request messages per second through PredictHandler (contract parse + predict + result),
    ``per_call`` messages per call: 1 is the Pub/Sub function, more is a Kafka micro-batch."""
    from common.predict_handler import Envelope, PredictHandler

    settings = Settings.from_env({}, model_uri=model_dir)
    handler = PredictHandler(settings, FMPredictor(model_dir, settings=settings))
    bodies = [json.dumps({"request_id": f"b-{i}", "instances": [images[i].tolist()]}).encode()
              for i in range(256)]
    envelopes = [Envelope(body, {"content_type": "application/json"}, str(i)) for i, body in enumerate(bodies)]
    handler.handle(envelopes[:per_call])  # warm
    done, calls = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        offset = (calls * per_call) % (len(envelopes) - per_call + 1)
        handler.handle(envelopes[offset : offset + per_call])
        calls += 1
        done += per_call
    return {"messages_per_call": per_call, "messages_per_s": round(done / (time.perf_counter() - start), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_URI, help="model folder (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=5, help="new processes per cold-start figure")
    parser.add_argument("--skip-keras", action="store_true", help="skip the TensorFlow cold start (slow)")
    args = parser.parse_args(argv)
    if not (Path(args.model_dir) / "manifest.json").exists():
        print(f"no model at {args.model_dir}; train one first (python -m trainer) or pass --model-dir",
              file=sys.stderr)
        return 2
    results: dict[str, Any] = {"model_dir": args.model_dir, "cold_start": {}, "litert_throughput": []}
    results["cold_start"]["litert"] = cold_start(args.model_dir, "litert", args.repeats)
    print("cold start litert:", results["cold_start"]["litert"])
    if not args.skip_keras:
        results["cold_start"]["keras"] = cold_start(args.model_dir, "keras", max(1, args.repeats // 2))
        print("cold start keras: ", results["cold_start"]["keras"])
    # What a Cloud Function instance does: fetch the model from Cloud Storage (here the emulator) first.
    with StorageEmulator() as storage:
        os.environ.update(storage.env())  # for the upload from this process
        uri = upload_model(Path(args.model_dir), "bench-project")
        env = {**storage.env(), "GOOGLE_CLOUD_PROJECT": "bench-project"}
        row = cold_start(uri, "litert", args.repeats, env)
        results["cold_start"]["litert_from_storage_emulator"] = row
        print("cold start litert, model from the storage emulator:", row)
        if not args.skip_keras:
            row = cold_start(uri, "keras", max(1, args.repeats // 2), env)
            results["cold_start"]["keras_from_storage_emulator"] = row
            print("cold start keras, model from the storage emulator: ", row)
    settings = Settings.from_env({}, max_images_per_request=256)
    predictor = FMPredictor(args.model_dir, settings=settings)
    predictor.load()
    images = test_images(2048)
    for batch in (1, 8, 32, 256):
        row = throughput(predictor, images, batch)
        results["litert_throughput"].append(row)
        print("litert", row)
    results["handler_throughput"] = []
    for per_call in (1, 64):
        row = handler_throughput(args.model_dir, images, per_call)
        results["handler_throughput"].append(row)
        print("handler (JSON, 1 image per message)", row)
    out = REPO / "bench" / "results" / "bench_predict.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

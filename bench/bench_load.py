"""Long mode of the load test: a sustained stream through ingest (Pub/Sub) and through Kafka, with
the memory of every serving process sampled, to show that nothing grows with the messages handled.

    .venv/bin/python bench/bench_load.py                          # 300 s per stream
    .venv/bin/python bench/bench_load.py --seconds 60 --streams kafka

Starts the Pub/Sub emulator and a Kafka broker through ``devservices``; the model is the bundled
one when present (else the predict tests' tiny model, or FASHION_TEST_MODEL_DIR). The scenarios are
the ones the suite runs in short mode (tests/reliability/rel_load.py). Prints a summary and writes
``bench/results/load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "reliability")]

from rel_load import run_kafka_load, run_pubsub_load  # noqa: E402
from rel_support import model_dir  # noqa: E402

from devservices import start_kafka, start_pubsub  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "load.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="length of each stream")
    parser.add_argument("--kafka-rate", type=float, default=400.0, help="requests/s produced to Kafka")
    parser.add_argument("--pubsub-rate", type=float, default=150.0, help="requests/s posted to ingest")
    parser.add_argument("--streams", default="kafka,pubsub", help="comma-separated: kafka, pubsub")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model = model_dir()
    streams = [s.strip() for s in args.streams.split(",") if s.strip()]
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        work = Path(tmp)
        if "kafka" in streams:
            with start_kafka() as broker:
                report = run_kafka_load(broker.bootstrap_servers, model, work, seconds=args.seconds,
                                        rate=args.kafka_rate)
                reports.append(report.summary())
                print(json.dumps(reports[-1]), flush=True)
        if "pubsub" in streams:
            with start_pubsub() as emulator:
                os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host  # this process's admin and pull clients
                report = run_pubsub_load(emulator.project, emulator.host, model, work, seconds=args.seconds,
                                         rate=args.pubsub_rate)
                reports.append(report.summary())
                print(json.dumps(reports[-1]), flush=True)
    out = {"bench": "load", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": str(model),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "command": " ".join(["bench/bench_load.py", *(argv if argv is not None else sys.argv[1:])]),
           "streams": reports}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

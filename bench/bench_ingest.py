"""Benchmark: ingest requests/s and end-to-end latency (ingest POST -> result on the results topic).

    .venv/bin/python bench/bench_ingest.py            # full run (about a minute)
    .venv/bin/python bench/bench_ingest.py --short    # smoke run

Everything is real and local: the Pub/Sub and Cloud Storage emulators, ingest and predict served by
functions-framework (the same commands as ``make run``), the push subscription requests -> predict,
and a streaming-pull follower on the results topic. Phases:

1. sequential: one request at a time, one image each: latency without queueing;
2. concurrent: many single-image requests from several client threads: ingest requests/s, and
   end-to-end latency under that load (it includes waiting in the push backlog);
3. batches: JSON lists of 100 requests per POST: accepted images/s at the edge.

Prints a table and writes ``bench/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from common.settings import DEFAULT_MODEL_URI, Settings  # noqa: E402
from devservices import PubSubEmulator, StorageEmulator  # noqa: E402
from pipeline.local_run import create_pubsub_resources, upload_model  # noqa: E402
from pipeline.requests import array_request, load_test_set  # noqa: E402
from pipeline.results import Follower, Outcome  # noqa: E402
from pipeline.servers import FunctionServer, settings_env  # noqa: E402

RESULTS_FILE = REPO_ROOT / "bench" / "results" / "ingest.json"


class Arrivals:
    """Records when each request's result arrived (monotonic clock of this process)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.errors: dict[str, Outcome] = {}
        self._cond = threading.Condition()

    def add(self, outcome: Outcome) -> None:
        now = time.monotonic()
        with self._cond:
            if outcome.request_id is not None:
                self.at.setdefault(outcome.request_id, now)
                if outcome.kind == "error":
                    self.errors[outcome.request_id] = outcome
            self._cond.notify_all()

    def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (missing := ids - self.at.keys()) and time.monotonic() < deadline:
                self._cond.wait(0.5)
            return missing


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values) * 1000.0
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "max_ms": round(float(arr.max()), 1), "n": len(values)}


def run_phase(session_url: str, bodies: list[Any], concurrency: int,
              arrivals: Arrivals, timeout: float) -> dict[str, Any]:
    """POST every body with ``concurrency`` threads; returns throughput and latency figures."""
    sent_at: dict[str, float] = {}
    http_latency: list[float] = []
    local = threading.local()
    lock = threading.Lock()

    def post(body: Any) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        start = time.monotonic()
        response = session.post(session_url, json=body, timeout=60)
        took = time.monotonic() - start
        if response.status_code != 202:
            raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:300]}")
        with lock:
            http_latency.append(took)
            for rid in response.json()["request_ids"]:
                sent_at[rid] = start

    begin = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(post, bodies))
    accepted_s = time.monotonic() - begin
    missing = arrivals.wait_for(set(sent_at), timeout)
    if missing:
        raise RuntimeError(f"{len(missing)} results missing after {timeout:.0f} s")
    drained_s = max(arrivals.at[rid] for rid in sent_at) - begin
    e2e = [arrivals.at[rid] - sent_at[rid] for rid in sent_at]
    return {
        "http_posts": len(bodies), "requests": len(sent_at), "concurrency": concurrency,
        "ingest_posts_per_s": round(len(bodies) / accepted_s, 1),
        "ingest_requests_per_s": round(len(sent_at) / accepted_s, 1),
        "end_to_end_results_per_s": round(len(sent_at) / drained_s, 1),
        "http": percentiles(http_latency), "end_to_end": percentiles(e2e),
        "errors": sum(1 for rid in sent_at if rid in arrivals.errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="small counts, for a quick check")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_URI)
    parser.add_argument("--out", type=Path, default=RESULTS_FILE)
    args = parser.parse_args()
    sequential_n, concurrent_n, batches = (10, 60, 2) if args.short else (60, 400, 10)
    images, _ = load_test_set(1000)

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        pubsub = stack.enter_context(PubSubEmulator(work_dir=work / "pubsub"))
        gcs = stack.enter_context(StorageEmulator(work_dir=work / "gcs"))
        env = {**pubsub.env(), **gcs.env()}
        os.environ.update(env)
        settings = Settings(project_id=pubsub.project, log_level="WARNING")
        settings = replace(settings, model_uri=upload_model(Path(args.model_dir), settings.project_id),
                           model_cache_dir=str(work / "cache"))
        fn_env = {**settings_env(settings), **env}
        predict = stack.enter_context(FunctionServer("predict", "predict",
                                                     REPO_ROOT / "functions" / "predict" / "main.py",
                                                     signature_type="cloudevent", env=fn_env, log_dir=work))
        ingest = stack.enter_context(FunctionServer("ingest", "ingest", REPO_ROOT / "functions" / "ingest" / "main.py",
                                                    env=fn_env, log_dir=work))
        create_pubsub_resources(settings, predict.url)
        arrivals = Arrivals()
        follower = Follower(settings, arrivals.add, name="bench")
        stack.callback(follower.stop)
        follower.start()

        def singles(prefix: str, n: int, offset: int) -> list[Any]:
            return [array_request(f"{prefix}-{i}", images[(offset + i) % 1000:][:1]) for i in range(n)]

        cold = run_phase(ingest.url, singles("cold", 1, 0), 1, arrivals, 120)  # model download + load
        sequential = run_phase(ingest.url, singles("seq", sequential_n, 1), 1, arrivals, 120)
        concurrent = run_phase(ingest.url, singles("conc", concurrent_n, 100), args.concurrency, arrivals, 300)
        batch_bodies = [[array_request(f"batch-{b}-{i}", images[i : i + 1]) for i in range(100)]
                        for b in range(batches)]
        batched = run_phase(ingest.url, batch_bodies, 2, arrivals, 300)

    load = os.getloadavg()
    report = {
        "benchmark": "ingest",
        "command": "python bench/bench_ingest.py" + (" --short" if args.short else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m_at_end": round(load[0], 2)},
        "setup": "Pub/Sub emulator, push subscription -> predict (functions-framework), streaming-pull follower",
        "model_dir": str(args.model_dir),
        "cold_start_end_to_end_ms": cold["end_to_end"]["p50_ms"],
        "sequential": sequential, "concurrent": concurrent, "batches_of_100": batched,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\ningest benchmark ({os.cpu_count()} cores, load average {load[0]:.1f}); cold start end to end "
          f"{report['cold_start_end_to_end_ms']:.0f} ms")
    header = f"{'phase':<16} {'requests':>8} {'conc':>4} {'ingest req/s':>12} {'e2e res/s':>9} " \
             f"{'http p50':>8} {'http p99':>8} {'e2e p50':>8} {'e2e p99':>8}"
    print(header)
    print("-" * len(header))
    for name, phase in (("sequential", sequential), ("concurrent", concurrent), ("batches of 100", batched)):
        print(f"{name:<16} {phase['requests']:>8} {phase['concurrency']:>4} {phase['ingest_requests_per_s']:>12.1f} "
              f"{phase['end_to_end_results_per_s']:>9.1f} {phase['http']['p50_ms']:>8.1f} "
              f"{phase['http']['p99_ms']:>8.1f} {phase['end_to_end']['p50_ms']:>8.1f} "
              f"{phase['end_to_end']['p99_ms']:>8.1f}")
    print(f"(milliseconds; written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

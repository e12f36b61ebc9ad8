"""Long mode of the reliability tests: the Kafka adapter SIGKILLed at seeded random points while it
works through 50,000 requests, and the broker stopped / killed while the adapter is busy.

    .venv/bin/python bench/bench_reliability.py                     # 50,000 requests, 3 kills, seed 7
    .venv/bin/python bench/bench_reliability.py --n 20000 --kills 5 --seed 11 --skip-restart

Starts a Kafka broker through ``devservices``; the model is the bundled one when present (else the
predict tests' tiny model, or FASHION_TEST_MODEL_DIR). Same scenarios as the suite's short mode
(tests/reliability/rel_kafka.py). Prints each report (requests, kills, duplicates, losses, memory)
and writes ``bench/results/reliability.json``. Exit status 1 if any request was lost or answered
twice with different answers.
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

from rel_kafka import run_broker_restart_scenario, run_crash_scenario  # noqa: E402
from rel_support import model_dir  # noqa: E402

from devservices import KafkaBroker  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reliability.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="requests in the crash scenario")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of the adapter")
    parser.add_argument("--seed", type=int, default=7, help="seed of the kill points")
    parser.add_argument("--restart-n", type=int, default=10_000, help="requests in each broker-restart run")
    parser.add_argument("--skip-restart", action="store_true", help="only the crash scenario")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model = model_dir()
    runs: list[dict[str, Any]] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp, KafkaBroker() as broker:
        work = Path(tmp)
        crash = run_crash_scenario(broker.bootstrap_servers, model, work, n=args.n, kills=args.kills,
                                   seed=args.seed, timeout=max(600.0, args.n / 50))
        runs.append({"scenario": "adapter_sigkill", **crash.summary()})
        print(json.dumps(runs[-1]), flush=True)
        ok &= crash.lost == 0 and crash.conflicting == 0 and crash.committed == args.n
        if not args.skip_restart:
            for kill_broker in (False, True):
                name = "broker_kill" if kill_broker else "broker_stop"
                try:
                    restart = run_broker_restart_scenario(broker, model, work, n=args.restart_n, crash=kill_broker,
                                                          timeout=600)
                    runs.append({"scenario": name, **restart.summary()})
                    ok &= restart.lost == 0 and restart.conflicting == 0
                except AssertionError as exc:  # the scenario's own verdict (lost, stuck, adapter died)
                    runs.append({"scenario": name, "failed": str(exc)[:2000]})
                    ok = False
                print(json.dumps(runs[-1]), flush=True)
    out = {"bench": "reliability", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": str(model),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "command": " ".join(["bench/bench_reliability.py", *(argv if argv is not None else sys.argv[1:])]),
           "runs": runs, "ok": ok}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

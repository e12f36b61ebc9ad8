"""Shared pieces of the reliability tests and of bench/bench_reliability.py and bench/bench_load.py.

No pytest here, so the benchmarks can run the very same scenarios in their long mode: waiting on a
condition with a deadline, sampling a process tree's memory, the model folder to serve, and the
size knobs of the short (suite) and long (bench) modes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREDICT_TESTS = REPO / "tests" / "predict"


def env_int(name: str, default: int) -> int:
    """A size knob of the short mode, e.g. RELIABILITY_CRASH_N=2000 for a quicker local run."""
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``condition`` until it holds; raise AssertionError naming ``what`` after ``timeout`` s.

    Returns the seconds waited.
    """
    start = time.monotonic()
    deadline = start + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # polling interval of a deadline-bounded wait
    return time.monotonic() - start


def model_dir() -> Path:
    """The model to serve: FASHION_TEST_MODEL_DIR, else the bundled model once it is there, else the
    predict tests' tiny model (trained once and cached). Every scenario works with any of them."""
    override = os.environ.get("FASHION_TEST_MODEL_DIR")
    if override:
        return Path(override)
    bundled = REPO / "models" / "fashion-cnn"
    if (bundled / "manifest.json").exists() and (bundled / "model.tflite").exists():
        return bundled
    if str(PREDICT_TESTS) not in sys.path:
        sys.path.insert(0, str(PREDICT_TESTS))
    from fm_tiny_model import tiny_model_dir

    return Path(tiny_model_dir())


# --- memory ------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return out


def _rss_one(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """Resident memory in bytes of ``pid`` and all its descendants (gunicorn master + workers)."""
    total = 0
    stack = [pid]
    seen: set[int] = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_one(p)
        stack.extend(_children(p))
    return total


def descendants(pid: int) -> set[int]:
    """Pids below ``pid`` (a crashed and respawned gunicorn worker shows up as a changed set)."""
    out: set[int] = set()
    stack = _children(pid)
    while stack:
        p = stack.pop()
        if p not in out:
            out.add(p)
            stack.extend(_children(p))
    return out


def growth_per_message(samples: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS (bytes) over messages handled: a leak's bytes per message."""
    if len(samples) < 2:
        return 0.0
    xs = [float(x) for x, _ in samples]
    ys = [float(y) for _, y in samples]
    mx = sum(xs) / len(xs)
    my = sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var

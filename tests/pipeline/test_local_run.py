"""The main-job command, run as a user runs it: ``python -m pipeline.local_run --short`` on each broker.

It starts its own emulators (and broker), so these tests use no session fixture; the printed table
and accuracy are what they check.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from pipeline_helpers import model_dir

from devservices._proc import tcp_answers
from pipeline.servers import REPO_ROOT

THIRD_PATH = {"pubsub": "gcloud", "kafka": "binary"}


@pytest.mark.parametrize("broker", ["pubsub", pytest.param("kafka", marks=pytest.mark.kafka)])
def test_local_run_short_prints_predictions_and_accuracy(broker: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for var in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "KAFKA_BOOTSTRAP_SERVERS"):
        env.pop(var, None)  # it starts its own services
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.local_run", "--short", "--broker", broker, "--model-dir", str(model_dir())],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"^accuracy: (\d+)/(\d+) = ", done.stdout, re.MULTILINE)
    assert match, done.stdout
    correct, total = int(match.group(1)), int(match.group(2))
    assert total == 10 and correct >= 8, done.stdout
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"^\s*\d+\s", line)]
    assert {row[1] for row in rows} == {"json", "png", THIRD_PATH[broker]}
    assert "stopping everything" in done.stderr


def test_ctrl_c_stops_every_service_it_started() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.local_run", "--short", "--keep-running", "--model-dir", str(model_dir())],
        env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or ()], daemon=True).start()
    ports: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, "local_run never reached 'still serving'"
            assert proc.poll() is None, f"local_run exited early with {proc.returncode}"
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if re.search(r"(emulator on|serving on) ", line):
                ports.append(int(re.findall(r"127\.0\.0\.1:(\d+)", line)[0]))
            if "still serving" in line:
                break
        assert len(ports) == 4  # storage emulator, Pub/Sub emulator, predict, ingest
        assert all(tcp_answers("127.0.0.1", port) for port in ports)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not [port for port in ports if tcp_answers("127.0.0.1", port)], "something still listens"

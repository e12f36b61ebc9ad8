"""The main-job command, run as a user runs it: ``python -m pipeline.local_run --short`` on each broker.

It starts its own emulators (and broker), so these tests use no session fixture; the printed table
and accuracy are what they check.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pipeline_helpers import model_dir

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

"""Sustained load through ingest (Pub/Sub) and through Kafka for a fixed time: every request is
answered, nothing fails, and no serving process grows with the messages it handles.

Short mode (the suite): RELIABILITY_LOAD_S seconds per stream (default 12) after a warm-up burst. The long mode is
``bench/bench_load.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rel_load import LoadReport, rss_bound_ok, run_kafka_load, run_pubsub_load
from rel_support import env_float

SECONDS = env_float("RELIABILITY_LOAD_S", 12.0)
# A leak worth the name keeps something per message: a request as JSON arrays is about 3 kB, its
# pixels as float32 3 kB. The short run's windows (about 1,500 messages on Pub/Sub, 5,000 on Kafka)
# resolve an absolute growth of 16 MB, and on Kafka a slope of 2 kB per message; the long mode
# (bench/bench_load.py, 10,000+ messages per window) measures 100-200 B per message.
MAX_GROWTH_MB = 16.0
MAX_SLOPE_BYTES = 2048.0


def _check(report: LoadReport) -> None:
    print(f"{report.stream} load:", report.summary())
    assert report.sent > 0
    assert report.http_failures == 0
    assert report.errors == 0, "no request of the stream may end as an error"
    assert report.answered == report.sent, f"{report.sent - report.answered} requests unanswered"
    for proc in report.processes:
        assert len(proc.samples) >= 8, f"{proc.name}: too few memory samples"
        assert rss_bound_ok(proc, max_growth_mb=MAX_GROWTH_MB, max_slope=MAX_SLOPE_BYTES), proc.summary()


def test_kafka_stream_keeps_memory_flat(kafka_broker: Any, serving_model: Path, tmp_path: Path) -> None:
    _check(run_kafka_load(kafka_broker.bootstrap_servers, serving_model, tmp_path, seconds=SECONDS,
                          rate=env_float("RELIABILITY_LOAD_KAFKA_RATE", 400.0)))


def test_ingest_pubsub_stream_keeps_memory_flat(pubsub_emulator: Any, serving_model: Path, tmp_path: Path) -> None:
    _check(run_pubsub_load(pubsub_emulator.project, pubsub_emulator.host, serving_model, tmp_path, seconds=SECONDS,
                           rate=env_float("RELIABILITY_LOAD_PUBSUB_RATE", 150.0)))

"""Bad input and abuse: a table of hostile inputs through ingest (HTTP) and straight onto the
requests topics of both brokers. Each gets its structured error; no worker crashes or hangs; no
message makes the service open a local file (a canary file's access time is watched).

One run of the whole battery per module (servers are started once), then one test per case and
channel checks what came back.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from kafka import KafkaProducer
from rel_hostile import ALLOWED_BUCKET, LIMITS, Hostile, cases, dot_segment_uri, real_png
from rel_kafka import AdapterProcess, Collector, new_topics
from rel_pubsub import Topics, payloads, predict_test_helpers, serve
from rel_support import descendants, wait_for

predict_test_helpers()
from fm_gcs import client_for  # noqa: E402  (tests/predict helpers)

from common.contract import parse_request  # noqa: E402
from common.errors import ForbiddenSource  # noqa: E402
from common.settings import Settings  # noqa: E402

CHANNELS = ("ingest", "pubsub", "kafka")
ANSWER_TIMEOUT_S = 10.0  # an HTTP answer or a topic answer slower than this counts as a hang

# Known defects, each a one-line fix in another helper's module (see RELIABILITY.md). strict: the
# marker must go once the fix lands.
# (channel, case) pairs with a known defect, each marked strict-xfail until it is mended.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@dataclass
class Seen:
    status: int | None = None  # ingest's HTTP status
    code: str | None = None  # the error code finally received
    request_id: str | None = None
    seconds: float = 0.0
    note: str = ""


def _canary(folder: Path, name: str) -> Path:
    """A real PNG whose access time is older than its modification time, so that any read moves it
    (even on a relatime mount)."""
    path = folder / name
    path.write_bytes(real_png(1))
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns - 3_600 * 10**9, st.st_mtime_ns))
    return path


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = _canary(tmp_path_factory.mktemp("canary"), "canary.png")
    return path, path.stat().st_atime_ns


@pytest.fixture(scope="module")
def battery(pubsub_emulator: Any, gcs_emulator: Any, kafka_broker: Any, serving_model: Path, canary: tuple[Path, int],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Serve ingest, predict (push) and the Kafka adapter with small limits; send every case through
    every channel; collect what each case got."""
    work = tmp_path_factory.mktemp("hostile")
    gcs = client_for(gcs_emulator.endpoint)
    if gcs.lookup_bucket(ALLOWED_BUCKET) is None:
        gcs.create_bucket(ALLOWED_BUCKET)
    env = {**LIMITS, "PUBSUB_EMULATOR_HOST": pubsub_emulator.host, "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    topics = Topics(pubsub_emulator.project)
    settings = topics.settings(model_uri=str(serving_model))
    predict = serve("predict", settings, work, **env)
    ingest = serve("ingest", settings, work, **env)
    topics.push_to(predict.url, ack_deadline_s=10)
    bootstrap = kafka_broker.bootstrap_servers
    names = new_topics(bootstrap, 1)
    adapter = AdapterProcess(bootstrap, names, serving_model, work / "adapter.log", max_batch=8,
                             env={**env, "LOG_LEVEL": "INFO"}).start()
    collector = Collector(bootstrap, names).start()
    try:
        workers = {"predict": descendants(predict.proc.pid or 0), "ingest": descendants(ingest.proc.pid or 0)}
        battery = cases(canary[0])
        seen: dict[tuple[str, str], Seen] = {}
        pubsub_ids: dict[str, tuple[str, str]] = {}  # Pub/Sub message id -> (channel, case)
        for h in battery:
            if h.ingest is not None:
                seen[("ingest", h.name)] = s = _post(ingest.url, h)
                for mid in s.note.split(",") if s.status == 202 else ():
                    pubsub_ids[mid] = ("ingest", h.name)
            pubsub_ids[topics.publish(h.body, _attributes(h))] = ("pubsub", h.name)
            seen[("pubsub", h.name)] = Seen()
        kafka_ids = _produce(bootstrap, names.requests, battery)
        for name in kafka_ids.values():
            seen[("kafka", name)] = Seen()
        # Every case must be answered on the errors topics (none may end up as a result).
        started = time.monotonic()
        got: list[dict[str, Any]] = []
        deadline = started + 60
        while time.monotonic() < deadline and len(got) < len(pubsub_ids):
            got += payloads(topics.pull(topics.errors, len(pubsub_ids) - len(got), timeout=2))
        for error in got:
            key = pubsub_ids.get(error.get("message_id", ""))
            if key:
                seen[key].code, seen[key].request_id = error["error"]["code"], error["request_id"]
        wait_for(lambda: len(collector.snapshot()[0]) >= len(kafka_ids), 60, "Kafka errors for every case")
        answers, kinds = collector.snapshot()
        for values in answers.values():
            for value in values:
                error = json.loads(value)
                case = kafka_ids.get(error.get("message_id", ""))
                if case and "error" in error:
                    seen[("kafka", case)].code = error["error"]["code"]
                    seen[("kafka", case)].request_id = error["request_id"]
        results = payloads(topics.drain(topics.results, quiet_s=1, timeout=10))
        yield {"seen": seen, "cases": {h.name: h for h in battery}, "topics": topics, "ingest": ingest,
               "predict": predict, "adapter": adapter, "collector": collector, "workers": workers,
               "results": results, "kafka_kinds": kinds, "bootstrap": bootstrap, "names": names}
    finally:
        collector.stop()
        adapter.terminate(timeout=30)
        ingest.stop()
        predict.stop()
        topics.delete()


def _attributes(h: Hostile) -> dict[str, str]:
    attributes = {"content_type": h.content_type}
    if h.has_id:
        attributes["request_id"] = h.rid
    attributes.update(h.attributes)
    return attributes


def _post(url: str, h: Hostile) -> Seen:
    started = time.monotonic()
    try:
        r = requests.post(url, data=h.body, headers={"Content-Type": h.content_type}, params=h.query,
                          timeout=ANSWER_TIMEOUT_S)
    except requests.RequestException as exc:
        return Seen(note=f"no answer: {exc!r}", seconds=time.monotonic() - started)
    seen = Seen(status=r.status_code, seconds=time.monotonic() - started)
    try:
        body = r.json()
    except ValueError:
        seen.note = f"not a JSON answer: {r.text[:200]!r}"
        return seen
    if r.status_code == 202:
        seen.note = ",".join(body["message_ids"])
    else:
        seen.code, seen.request_id = body["error"]["code"], body["request_id"]
        seen.note = ";".join(f"{k}: {v}" for k, v in r.headers.items())
    return seen


def _produce(bootstrap: str, topic: str, battery: list[Hostile]) -> dict[str, str]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2 * 1024 * 1024)
    ids = {}
    try:
        for h in battery:
            headers = [(k, v.encode()) for k, v in _attributes(h).items()]
            md = producer.send(topic, h.body, headers=headers).get(timeout=30)
            ids[f"{md.topic}:{md.partition}:{md.offset}"] = h.name
        # A header that is not UTF-8 at all (Kafka headers are raw bytes).
        md = producer.send(topic, b"\xff\xfe{not json", headers=[("request_id", b"\xff\xfe\r\n"),
                                                                 ("content_type", b"\xc3\x28")]).get(timeout=30)
        ids[f"{md.topic}:{md.partition}:{md.offset}"] = "kafka-binary-headers"
    finally:
        producer.close()
    return ids


PARAMS = [pytest.param(channel, h.name, id=f"{channel}-{h.name}",
                       marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(channel, h.name)])]
                       if (channel, h.name) in KNOWN_BUGS else [])
          for h in cases(Path("/canary.png")) for channel in CHANNELS
          if channel != "ingest" or h.ingest is not None]


def test_battery_has_at_least_20_cases() -> None:
    assert len(cases(Path("/canary.png"))) >= 20


@pytest.mark.parametrize(("channel", "name"), PARAMS)
def test_hostile_input_gets_its_structured_error(battery: dict[str, Any], channel: str, name: str) -> None:
    h: Hostile = battery["cases"][name]
    seen: Seen = battery["seen"][(channel, name)]
    if channel == "ingest":
        assert seen.status == h.ingest, f"HTTP {seen.status} ({seen.note})"
        assert seen.seconds < ANSWER_TIMEOUT_S
        assert "pwned" not in seen.note.lower() and "x-injected" not in seen.note.lower(), "header injected"
    assert seen.code == h.expected(channel), f"{channel}: got {seen.code!r}"
    if h.has_id:
        assert seen.request_id in (h.rid, None if seen.status == 413 else h.rid)
    else:
        assert seen.request_id is None, "a malformed id is never echoed"


def test_gs_uri_with_dot_segments_is_refused_by_the_contract(tmp_path: Path) -> None:
    request = {"request_id": "h-dots", "instances": [{"gcs_uri": dot_segment_uri(tmp_path / "canary.png")}]}
    settings = Settings.from_env({}, allowed_buckets=(ALLOWED_BUCKET,))
    with pytest.raises(ForbiddenSource):
        parse_request(json.dumps(request).encode(), {}, settings)


def test_kafka_record_with_raw_byte_headers_is_answered(battery: dict[str, Any]) -> None:
    seen: Seen = battery["seen"][("kafka", "kafka-binary-headers")]
    assert seen.code in ("unsupported_content_type", "invalid_json")
    assert seen.request_id is None


def test_no_hostile_input_produced_a_result(battery: dict[str, Any]) -> None:
    assert battery["results"] == []
    assert all(kinds == {"error"} for kinds in battery["kafka_kinds"].values())


def test_no_message_opened_the_canary_file(battery: dict[str, Any], canary: tuple[Path, int],
                                           tmp_path: Path) -> None:
    path, atime = canary
    assert path.stat().st_atime_ns == atime, "a message made the service read a local file"
    # The detector itself works on this filesystem: reading a twin moves its access time.
    twin = _canary(tmp_path, "twin.png")
    before = twin.stat().st_atime_ns
    twin.read_bytes()
    assert twin.stat().st_atime_ns != before


def test_every_worker_survived_and_still_serves(battery: dict[str, Any]) -> None:
    ingest, predict, adapter, topics = battery["ingest"], battery["predict"], battery["adapter"], battery["topics"]
    assert ingest.proc.alive() and predict.proc.alive() and adapter.alive()
    assert descendants(predict.proc.pid) == battery["workers"]["predict"], "a predict worker died and was replaced"
    assert descendants(ingest.proc.pid) == battery["workers"]["ingest"], "an ingest worker died and was replaced"
    r = requests.post(ingest.url, json={"request_id": "after-battery", "instances": [[0] * 784]},
                      timeout=ANSWER_TIMEOUT_S)
    assert r.status_code == 202
    [result] = payloads(topics.pull(topics.results, 1))
    assert result["request_id"] == "after-battery"
    producer = KafkaProducer(bootstrap_servers=battery["bootstrap"], acks="all")
    producer.send(battery["names"].requests, b'{"request_id": "after-battery-k", "instances": [[0]]}'.replace(
        b"[[0]]", b"[[" + b"0," * 783 + b"0]]"), headers=[("content_type", b"application/json")]).get(timeout=30)
    producer.close()
    collector: Collector = battery["collector"]
    wait_for(lambda: collector.has_all({"after-battery-k"}), 30, "the adapter to answer after the battery")
    assert collector.snapshot()[1]["after-battery-k"] == {"result"}

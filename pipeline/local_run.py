"""The whole pipeline on one machine, end to end: ``make run`` (Pub/Sub) and ``make run-kafka``.

    python -m pipeline.local_run                     # Pub/Sub emulator + push subscription + both functions
    python -m pipeline.local_run --broker kafka      # a real Kafka broker + the predict adapter
    python -m pipeline.local_run --samples 200       # more test images (default 50); --short: a quick 10

What it does, printing each step:

1. starts the Pub/Sub emulator (or a Kafka broker) and the Cloud Storage emulator (``devservices``);
2. uploads the bundled model (``models/fashion-cnn``) to an emulator bucket and serves it from there
   (``MODEL_URI=gs://...``), as a deployment does;
3. serves ``ingest`` and ``predict`` with functions-framework on free loopback ports and creates the
   topics and the push subscription ``requests -> predict`` (Kafka: runs the predict adapter instead);
4. sends real Fashion-MNIST test images three ways: a JSON batch of pixel arrays to ingest, PNG files
   uploaded to ingest as multipart form data, and multi-image requests published by the real
   ``gcloud pubsub topics publish`` command (Kafka: published directly in the compact binary form);
5. follows the results and errors topics, prints each prediction beside its true label, and the
   accuracy over the sample;
6. stops everything it started, also on Ctrl-C (``--keep-running`` leaves it all up until then, and
   prints the variables that point ``gcloud``, ``curl`` and the sender at it). Exit status 0 when
   every request was answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from common.settings import DEFAULT_MODEL_URI, Settings
from devservices._proc import ManagedProcess
from pipeline.requests import CLASS_NAMES, array_request, load_test_set, png_bytes
from pipeline.results import Follower, Outcome
from pipeline.servers import REPO_ROOT, FunctionServer, settings_env

MODEL_BUCKET = "local-models"
SHORT_SAMPLES = 10
BATCH_PER_POST = 100  # requests per ingest call, under MAX_IMAGES_PER_REQUEST
IMAGES_PER_GCLOUD_MESSAGE = 25


_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr (seconds since start), so stdout carries only the predictions and the accuracy."""
    print(f"[local_run {time.monotonic() - _T0:5.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sent:
    """One request of the sample: which test images it holds and which path it took."""

    request_id: str
    indices: tuple[int, ...]
    via: str


class Collector:
    """Gathers outcomes by request id and lets the main thread wait for a set of ids."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self.unknown: list[Outcome] = []
        self._cond = threading.Condition()

    def add(self, outcome: Outcome) -> None:
        with self._cond:
            if outcome.request_id is None:
                self.unknown.append(outcome)
            else:
                self.outcomes[outcome.request_id] = outcome
            self._cond.notify_all()

    def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        """Wait until every id has an outcome or ``timeout`` passes; returns the ids still missing."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = ids - self.outcomes.keys()
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0:
                    return missing
                self._cond.wait(min(remaining, 1.0))


# --- set-up steps ---------------------------------------------------------------------------------


def upload_model(model_dir: Path, project: str, bucket_name: str = MODEL_BUCKET) -> str:
    """Copy the model folder's files into the storage emulator; returns the ``gs://`` URI to serve."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    if not (model_dir / "manifest.json").is_file():
        raise SystemExit(f"no model at {model_dir} (manifest.json missing): train one first "
                         "(see README: make train) or pass --model-dir")
    client = storage.Client(project=project, credentials=AnonymousCredentials())
    bucket = client.bucket(bucket_name)
    if not bucket.exists():
        bucket = client.create_bucket(bucket_name)
    prefix = model_dir.name
    for path in sorted(model_dir.iterdir()):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))
    return f"gs://{bucket_name}/{prefix}"


def create_pubsub_resources(settings: Settings, push_endpoint: str) -> None:
    from common.messaging.pubsub.admin import ensure_subscription, ensure_topic

    for topic in (settings.requests_topic, settings.results_topic, settings.errors_topic):
        ensure_topic(settings.project_id, topic)
    ensure_subscription(settings.project_id, settings.requests_topic, f"{settings.requests_topic}-push",
                        push_endpoint=push_endpoint, ack_deadline_s=60)


def create_kafka_topics(settings: Settings) -> None:
    from common.messaging.kafka.admin import ensure_topic

    for topic in (settings.requests_topic, settings.results_topic, settings.errors_topic):
        ensure_topic(settings.kafka_bootstrap_servers, topic)


# --- the three ways in ------------------------------------------------------------------------------


def post_json(url: str, body: Any, timeout: float = 60.0) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    return _send(request, timeout)


def post_upload(url: str, filename: str, data: bytes, fields: dict[str, str], timeout: float = 60.0) -> dict[str, Any]:
    """A multipart/form-data upload, as ``curl -F image=@file -F request_id=...`` sends it."""
    boundary = f"----local-run-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(url, data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return _send(request, timeout)


def _send(request: urllib.request.Request, timeout: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"ingest answered {exc.code}: {exc.read().decode('utf-8', 'replace')[:400]}") from exc


def gcloud_publish(settings: Settings, emulator_host: str, body: dict[str, Any]) -> str:
    """Publish one JSON request with the real ``gcloud`` CLI, pointed at the emulator."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise RuntimeError("gcloud is not on PATH")
    env = dict(os.environ)
    env.update({
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{emulator_host}/",
        "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
        "CLOUDSDK_CORE_PROJECT": settings.project_id,
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    })
    argv = [gcloud, "pubsub", "topics", "publish", settings.requests_topic,
            f"--message={json.dumps(body, separators=(',', ':'))}", "--attribute=content_type=application/json"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"gcloud pubsub topics publish failed: {done.stderr.strip()[-400:]}")
    return done.stdout.strip()


def split_sample(n: int) -> tuple[range, range, range]:
    """Index ranges for the three paths: about 40% arrays, 40% PNG uploads, the rest the third way."""
    if n < 3:
        raise ValueError("--samples must be at least 3 (one image per path)")
    arrays = max(1, round(n * 0.4))
    pngs = max(1, round(n * 0.4))
    if arrays + pngs >= n:
        pngs = n - arrays - 1
    return range(0, arrays), range(arrays, arrays + pngs), range(arrays + pngs, n)


def _chunks(indices: range, size: int) -> list[range]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def send_sample(settings: Settings, ingest_url: str, images: np.ndarray, first: int, tag: str,
                emulator_host: str | None) -> list[Sent]:
    """Send the sample through ingest (arrays, PNG uploads) and the third path; returns what was sent."""
    arrays, pngs, rest = split_sample(len(images))
    sent: list[Sent] = []

    for chunk in _chunks(arrays, BATCH_PER_POST):
        batch = [array_request(f"{tag}-arr-{first + i:05d}", images[i : i + 1]) for i in chunk]
        answer = post_json(ingest_url, batch)
        sent += [Sent(rid, (first + i,), "json") for rid, i in zip(answer["request_ids"], chunk, strict=True)]
    say(f"ingest accepted {len(arrays)} pixel-array requests as JSON batches of up to {BATCH_PER_POST}")

    def upload(i: int) -> Sent:
        rid = f"{tag}-png-{first + i:05d}"
        post_upload(ingest_url, f"test-{first + i}.png", png_bytes(images[i]), {"request_id": rid})
        return Sent(rid, (first + i,), "png")

    with ThreadPoolExecutor(max_workers=4) as pool:
        sent += list(pool.map(upload, pngs))
    say(f"ingest accepted {len(pngs)} PNG uploads (multipart/form-data)")

    if settings.broker == "pubsub":
        assert emulator_host is not None
        # One command-line argument holds at most 128 KiB on Linux: about 40 images as JSON arrays.
        for chunk in _chunks(rest, IMAGES_PER_GCLOUD_MESSAGE):
            rid = f"{tag}-bulk-{first + chunk[0]:05d}"
            gcloud_publish(settings, emulator_host, array_request(rid, images[chunk.start : chunk.stop]))
            sent.append(Sent(rid, tuple(first + i for i in chunk), "gcloud"))
        say(f"gcloud pubsub topics publish sent {len(rest)} images in multi-image requests")
        return sent

    from common.contract import encode_pixels
    from common.messaging import make_publisher

    with make_publisher(settings) as publisher:
        for chunk in _chunks(rest, BATCH_PER_POST):
            rid = f"{tag}-bulk-{first + chunk[0]:05d}"
            data, attributes = encode_pixels(rid, np.ascontiguousarray(images[chunk.start : chunk.stop]))
            publisher.publish_and_wait(settings.requests_topic, data, attributes)
            sent.append(Sent(rid, tuple(first + i for i in chunk), "binary"))
    say(f"published {len(rest)} images straight to Kafka as binary multi-image requests")
    return sent


# --- report ---------------------------------------------------------------------------------------


def report(sent: Sequence[Sent], labels: dict[int, int], collector: Collector) -> tuple[int, int]:
    """Print one line per image (prediction beside truth) and the accuracy; returns (correct, total)."""
    print(f"{'image':>6}  {'via':<6}  {'true label':<12}  {'predicted':<12}  {'score':>5}  ok")
    correct = total = 0
    for item in sent:
        outcome = collector.outcomes.get(item.request_id)
        predictions = outcome.predictions if outcome is not None and outcome.kind == "result" else []
        for position, index in enumerate(item.indices):
            truth = CLASS_NAMES[labels[index]]
            total += 1
            if outcome is None:
                print(f"{index:>6}  {item.via:<6}  {truth:<12}  {'(no answer)':<12}")
                continue
            if outcome.kind == "error" or position >= len(predictions):
                code = outcome.error.get("code", "?")
                print(f"{index:>6}  {item.via:<6}  {truth:<12}  {'ERROR ' + code:<12}")
                continue
            pred = predictions[position]
            ok = pred.get("class_id") == labels[index]
            correct += ok
            print(f"{index:>6}  {item.via:<6}  {truth:<12}  {pred.get('label', '?'):<12}  "
                  f"{float(pred.get('score', 0.0)):5.2f}  {'yes' if ok else 'NO'}")
    pct = 100.0 * correct / total if total else 0.0
    print(f"accuracy: {correct}/{total} = {pct:.1f}%")
    return correct, total


# --- orchestration --------------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Point this process's clients at the emulators, restoring the environment afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(broker=args.broker)
    samples = SHORT_SAMPLES if args.short else args.samples
    model_dir = Path(args.model_dir or DEFAULT_MODEL_URI)
    images, labels_array = load_test_set(samples, args.offset)
    labels = {args.offset + i: int(label) for i, label in enumerate(labels_array)}
    tag = f"lr{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    if not (model_dir / "manifest.json").is_file():
        say(f"no model at {model_dir} (manifest.json missing): train one first, or pass --model-dir")
        return 2

    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="local-run-"))
        if args.keep_logs:
            say(f"logs kept in {work}")
        else:
            stack.callback(shutil.rmtree, work, True)
        from devservices.storage import StorageEmulator

        say("starting the Cloud Storage emulator ...")
        gcs = stack.enter_context(StorageEmulator(work_dir=work / "gcs"))
        say(f"Cloud Storage emulator on {gcs.endpoint}")
        env = dict(gcs.env())
        emulator_host: str | None = None
        if settings.broker == "pubsub":
            from devservices.pubsub import PubSubEmulator

            say("starting the Pub/Sub emulator ...")
            pubsub = stack.enter_context(PubSubEmulator(project=settings.project_id, work_dir=work / "pubsub"))
            env.update(pubsub.env())
            emulator_host = pubsub.host
            say(f"Pub/Sub emulator on {pubsub.host}")
        else:
            from devservices.kafka_broker import KafkaBroker, install_jars

            say("starting a Kafka broker (first run downloads its jars) ...")
            install_jars()
            kafka = stack.enter_context(KafkaBroker(work_dir=work / "kafka"))
            settings = replace(settings, kafka_bootstrap_servers=kafka.bootstrap_servers)
            say(f"Kafka broker on {kafka.bootstrap_servers}")
        stack.enter_context(_environ(env))

        model_uri = upload_model(model_dir, settings.project_id)
        say(f"model {model_dir} uploaded to {model_uri}")
        settings = replace(settings, model_uri=model_uri, model_cache_dir=str(work / "model-cache"))
        fn_env = {**settings_env(settings), **env}

        if settings.broker == "pubsub":
            predict = stack.enter_context(FunctionServer(
                "predict", "predict", REPO_ROOT / "functions" / "predict" / "main.py",
                signature_type="cloudevent", env=fn_env, log_dir=work))
            create_pubsub_resources(settings, predict.url)
            say(f"predict serving on {predict.url}; push subscription {settings.requests_topic}-push -> it")
        else:
            create_kafka_topics(settings)
            adapter = ManagedProcess("predict adapter", [sys.executable, "-m", "common.kafka_adapter"],
                                     work / "adapter.log", env={**os.environ, **fn_env}, cwd=REPO_ROOT)
            adapter.start()
            stack.callback(adapter.stop, 10)
            say(f"predict adapter consuming {settings.requests_topic} as group {settings.kafka_group_id}")
        ingest = stack.enter_context(FunctionServer("ingest", "ingest", REPO_ROOT / "functions" / "ingest" / "main.py",
                                                    env=fn_env, log_dir=work))
        say(f"ingest serving on {ingest.url}")

        collector = Collector()
        follower = Follower(settings, collector.add, name=f"local-run-{tag}")
        stack.callback(follower.stop)
        follower.start()
        say(f"following {settings.results_topic} and {settings.errors_topic}")

        sent = send_sample(settings, ingest.url, images, args.offset, tag, emulator_host)
        ids = {item.request_id for item in sent}
        missing = collector.wait_for(ids, args.timeout)
        report(sent, labels, collector)
        say(f"sample done in {time.monotonic() - started:.1f} s")
        if missing:
            say(f"{len(missing)} request(s) got no answer within {args.timeout:.0f} s: {sorted(missing)[:5]}")
            say(f"see the function logs (--keep-logs keeps them): {work}")
        if args.keep_running:
            keep_running(ingest.url, env, settings)
        say("stopping everything")
    return 1 if missing else 0


def keep_running(ingest_url: str, env: dict[str, str], settings: Settings) -> None:
    """Leave the pipeline up for experiments (curl, gcloud, the sender) until Ctrl-C or SIGTERM."""
    env = dict(env)
    if settings.broker == "kafka":
        env["KAFKA_BOOTSTRAP_SERVERS"] = settings.kafka_bootstrap_servers
    exports = " ".join(f"{key}={value}" for key, value in sorted(env.items()))
    # Ctrl-C may come as soon as the first line is out, so the messages sit inside the suppression too.
    with contextlib.suppress(KeyboardInterrupt):
        say(f"still serving; in another shell: export {exports} "
            f"CLOUDSDK_CORE_PROJECT={settings.project_id} GCP_PROJECT={settings.project_id} BROKER={settings.broker}")
        say(f"ingest: {ingest_url}   results follow: python -m pipeline.results   (Ctrl-C stops everything)")
        while True:
            signal.pause()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.local_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("pubsub", "kafka"), default="pubsub")
    parser.add_argument("--samples", type=int, default=50, help="test images to send (default %(default)s)")
    parser.add_argument("--short", action="store_true", help=f"a quick run with {SHORT_SAMPLES} images")
    parser.add_argument("--offset", type=int, default=0, help="first test-set index (default 0)")
    parser.add_argument("--model-dir", help=f"model folder to upload (default {DEFAULT_MODEL_URI})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all answers")
    parser.add_argument("--keep-logs", action="store_true", help="keep the emulator and function logs")
    parser.add_argument("--keep-running", action="store_true",
                        help="after the sample, keep everything up for experiments until Ctrl-C")
    args = parser.parse_args(argv)
    if args.samples < 3:
        parser.error("--samples must be at least 3")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("interrupted: everything started was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())

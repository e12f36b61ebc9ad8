"""The dev services really start, answer real clients, and stop without leaving processes behind.

Every other integration test leans on these fixtures, so a broken emulator or broker shows up here
first with a clear message rather than as a time-out somewhere else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devservices import KafkaBroker, PubSubEmulator, ServiceError, StorageEmulator
from devservices._proc import ManagedProcess, port_in_use, wait_until


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (to catch a JVM left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def _pgid(service: Any) -> int:
    """The process group of a running managed service (its leader's pid)."""
    assert service.proc is not None and service.proc.pid is not None
    return int(service.proc.pid)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# -- Pub/Sub emulator ------------------------------------------------------------------------------

def test_pubsub_emulator_publishes_and_pulls(pubsub_emulator: Any) -> None:
    from google.cloud import pubsub_v1

    assert os.environ["PUBSUB_EMULATOR_HOST"] == pubsub_emulator.host
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(pubsub_emulator.project, _unique("devsvc-topic"))
    subscription = subscriber.subscription_path(pubsub_emulator.project, _unique("devsvc-sub"))
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    try:
        publisher.publish(topic, b"hello", request_id="r-1").result(timeout=30)
        received: list[Any] = []
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
            received.extend(response.received_messages)
        assert [m.message.data for m in received] == [b"hello"]
        assert received[0].message.attributes["request_id"] == "r-1"
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in received])
    finally:
        subscriber.delete_subscription(subscription=subscription)
        publisher.delete_topic(topic=topic)
        subscriber.close()


@pytest.mark.parametrize("launcher", ["direct", "gcloud"])
def test_pubsub_emulator_stops_with_its_java_child(launcher: str) -> None:
    # gcloud starts the emulator as a Java child that outlives gcloud if only gcloud is stopped.
    with PubSubEmulator(launcher=launcher) as emulator:
        pgid = _pgid(emulator)
        port = emulator.port
        assert any("java" in c for c in _processes_mentioning(f"--port={port}"))
    assert _group_gone(pgid)
    assert not port_in_use(port)
    assert _processes_mentioning(f"--port={port}") == []


# -- Cloud Storage emulator ------------------------------------------------------------------------

def test_storage_emulator_uploads_and_downloads(gcs_emulator: Any) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_emulator.endpoint
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.create_bucket(_unique("devsvc-bucket"))
    payload = os.urandom(300_000)
    bucket.blob("models/m.tflite").upload_from_string(payload, content_type="application/octet-stream")
    assert bucket.blob("models/m.tflite").download_as_bytes() == payload
    assert [b.name for b in client.list_blobs(bucket.name, prefix="models/")] == ["models/m.tflite"]


def test_storage_emulator_stops_and_frees_its_port() -> None:
    emulator = StorageEmulator().start()
    pgid = _pgid(emulator)
    assert port_in_use(emulator.port)
    emulator.cleanup()
    assert _group_gone(pgid)
    assert not port_in_use(emulator.port)
    assert not emulator.work_dir.exists()


def test_start_on_a_busy_port_says_so() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        emulator = StorageEmulator(port=port)
        with pytest.raises(ServiceError, match=f"port 127.0.0.1:{port} is already in use"):
            emulator.start()
        emulator.cleanup()


def test_services_die_with_a_crashed_test_run(tmp_path: Path) -> None:
    # A test session killed with SIGKILL runs no finalizer; its emulators must not outlive it.
    script = (
        "import sys, time\n"
        "from devservices import PubSubEmulator, StorageEmulator\n"
        "services = [PubSubEmulator().start(), StorageEmulator().start()]\n"
        "print(' '.join(str(s.port) for s in services), flush=True)\n"
        "time.sleep(300)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": root}, cwd=root)
    try:
        assert child.stdout is not None
        ports = [int(p) for p in child.stdout.readline().split()]
        assert len(ports) == 2 and all(port_in_use(p) for p in ports)
    finally:
        child.kill()
        child.wait()

    def leftovers() -> list[str]:
        busy = [f"port {p}" for p in ports if port_in_use(p)]
        return busy + _processes_mentioning(f"--port={ports[0]}")

    deadline = time.monotonic() + 30
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers() == []


def test_missing_prerequisites_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A machine without Java or the Cloud SDK: the error says what is missing, not a bare traceback.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    broker = KafkaBroker()
    with pytest.raises(ServiceError, match=r"Java 17\+ is needed"):
        broker.start()
    broker.cleanup()
    emulator = PubSubEmulator()
    with pytest.raises(ServiceError, match="gcloud"):
        emulator.start()
    emulator.cleanup()


def test_a_service_that_dies_at_start_reports_its_log(tmp_path: Path) -> None:
    proc = ManagedProcess("doomed", ["sh", "-c", "echo 'cannot bind: boom' >&2; exit 3"], tmp_path / "doomed.log")
    proc.start()
    with pytest.raises(ServiceError, match=r"(?s)exited with code 3.*cannot bind: boom"):
        wait_until(lambda: False, timeout=30, proc=proc, what="answering")
    proc.stop()


# -- Kafka broker ----------------------------------------------------------------------------------

@pytest.fixture
def kafka_topic(kafka_broker: Any) -> Iterator[str]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = _unique("devsvc")
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    admin.close()
    yield name


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for value in values:
            producer.send(topic, value, key=value).get(timeout=30)
    finally:
        producer.close()


def _consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=_unique("devsvc-group"),
                             auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                values.extend(r.value for r in records)
    finally:
        consumer.close()
    return values


def test_kafka_broker_produces_and_consumes(kafka_broker: Any, kafka_topic: str) -> None:
    values = [f"record-{i}".encode() for i in range(20)]
    _produce(kafka_broker.bootstrap_servers, kafka_topic, values)
    assert sorted(_consume_all(kafka_broker.bootstrap_servers, kafka_topic, len(values))) == sorted(values)


@pytest.mark.parametrize("crash", [False, True], ids=["graceful-stop", "kill"])
def test_kafka_restart_keeps_records(kafka_broker: Any, kafka_topic: str, crash: bool) -> None:
    if not kafka_broker.restartable:
        pytest.skip("the broker was started elsewhere (DEVSERVICES_REUSE)")
    _produce(kafka_broker.bootstrap_servers, kafka_topic, [b"before-restart"])
    pgid = _pgid(kafka_broker)
    try:
        if crash:
            kafka_broker.kill()
        else:
            kafka_broker.stop()
        assert _group_gone(pgid)
        assert not port_in_use(kafka_broker.port)
        assert _processes_mentioning(str(kafka_broker.config_path)) == []
    finally:
        kafka_broker.start()  # later tests share this broker
    assert kafka_broker.bootstrap_servers.endswith(f":{kafka_broker.port}")
    assert _consume_all(kafka_broker.bootstrap_servers, kafka_topic, 1) == [b"before-restart"]


def test_kafka_cleanup_removes_its_data() -> None:
    # A broker of its own: cleanup() must stop the JVM and delete the log folder (the fixture's broker
    # keeps running for the other tests).
    broker = KafkaBroker()
    broker.start()
    pgid = _pgid(broker)
    assert (broker.data_dir / "meta.properties").exists()
    broker.cleanup()
    assert _group_gone(pgid)
    assert not port_in_use(broker.port)
    assert not broker.work_dir.exists()


# -- compose.yaml (Docker cannot run here: check only that it parses and agrees with devservices) ----

def test_compose_file_matches_the_devservices_ports() -> None:
    yaml = pytest.importorskip("yaml")
    from devservices.__main__ import _parser

    compose = yaml.safe_load((Path(__file__).resolve().parent.parent / "compose.yaml").read_text())
    defaults = _parser().parse_args(["up"])
    published = {name: svc["ports"][0] for name, svc in compose["services"].items()}
    assert published == {
        "kafka": f"127.0.0.1:{defaults.kafka_port}:9092",
        "pubsub": f"127.0.0.1:{defaults.pubsub_port}:8085",
        "gcs": f"127.0.0.1:{defaults.gcs_port}:9023",
    }
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://127.0.0.1:{defaults.kafka_port}"


# -- command line ----------------------------------------------------------------------------------

def test_up_prints_exports_and_stops_on_ctrl_c() -> None:
    import urllib.request

    root = str(Path(__file__).resolve().parent.parent)
    up = subprocess.Popen([sys.executable, "-m", "devservices", "up", "gcs", "--gcs-port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": root})
    try:
        assert up.stdout is not None
        line = up.stdout.readline().strip()
        assert line.startswith("export STORAGE_EMULATOR_HOST=http://127.0.0.1:")
        endpoint = line.split("=", 1)[1]
        with urllib.request.urlopen(f"{endpoint}/storage/v1/b?project=p", timeout=5) as resp:
            assert resp.status == 200
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert not port_in_use(int(endpoint.rsplit(":", 1)[1]))

"""A real Apache Kafka broker: one node in KRaft mode (broker and controller in one JVM), on loopback.

The jars come from Maven Central through ``devservices/kafka/pom.xml`` and are kept in
``~/.cache/fashion-pipeline/kafka-<version>/libs`` (outside the clone, so a fresh CI clone reuses them).
The data folder survives ``stop()``/``start()`` so that fault-tolerance tests can restart the broker and
find their records again; ``cleanup()`` deletes it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from devservices._base import Service
from devservices._proc import (
    ManagedProcess,
    ServiceError,
    free_port,
    require_free_port,
    tail,
    tcp_answers,
    wait_until,
)

KAFKA_VERSION = "4.4.0"  # keep in step with kafka.version in devservices/kafka/pom.xml
RESOURCES = Path(__file__).resolve().parent / "kafka"
POM = RESOURCES / "pom.xml"
LOG4J_CONFIG = RESOURCES / "log4j2.properties"
MIN_JAVA = 17
# C1-only JIT: the broker starts about a third faster; its peak throughput is lower, which tests and
# local runs never reach (pass quick_start=False to KafkaBroker for broker benchmarks).
QUICK_JIT = ["-XX:TieredStopAtLevel=1"]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/fashion-pipeline`` (default ``~/.cache/fashion-pipeline``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fashion-pipeline"


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / f"kafka-{version}"


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return kafka_home(version) / "libs"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _marker() -> Path:
    return kafka_home() / ".complete"


def jars_installed() -> bool:
    """True when the jar cache is complete and was made from the current pom."""
    marker = _marker()
    return marker.exists() and marker.read_text().strip() == _pom_digest()


def java_command() -> str | None:
    """``$JAVA_HOME/bin/java`` if set, else ``java`` on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def java_major_version(java: str) -> int:
    """The major version of a ``java`` binary (``17`` for ``17.0.15``)."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise ServiceError(f"kafka: cannot read the version of {java}: {out.stderr.strip()}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java() -> str:
    """The java binary to use; raises ServiceError when there is none or it is too old."""
    java = java_command()
    if java is None:
        raise ServiceError(
            f"kafka: Java {MIN_JAVA}+ is needed and `java` is not on PATH "
            "(apt-get install openjdk-17-jre-headless, or set JAVA_HOME)."
        )
    major = java_major_version(java)
    if major < MIN_JAVA:
        raise ServiceError(f"kafka: Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, {java} is Java {major}.")
    return java


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """Serialise installs between concurrent processes (two test sessions, CI and a dev shell)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f".kafka-{KAFKA_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install_jars(verbose: bool = False) -> bool:
    """Fetch the broker's jars with Maven into the cache unless already there. Returns True if it fetched.

    Idempotent and safe to run concurrently: it downloads into a temporary folder and renames it into
    place, and a marker holding the pom's digest says the cache is complete.
    """
    if jars_installed():
        return False
    with _cache_lock():
        if jars_installed():
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError(
                "kafka: the broker's jars are not cached and `mvn` is not on PATH to fetch them "
                "(apt-get install maven)."
            )
        home = kafka_home()
        home.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
        argv = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
        if verbose:
            print("+ " + " ".join(argv), flush=True)
        result = subprocess.run(argv, capture_output=not verbose, text=True, timeout=1800)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            output = ((result.stdout or "") + (result.stderr or ""))[-4000:]
            raise ServiceError(f"kafka: `mvn dependency:copy-dependencies` failed ({result.returncode}):\n{output}")
        if not any(p.name.startswith("kafka_2.13-") for p in staging.iterdir()):
            shutil.rmtree(staging, ignore_errors=True)
            raise ServiceError(f"kafka: Maven finished but fetched no kafka_2.13 jar into {staging}")
        target = libs_dir()
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        _marker().write_text(_pom_digest() + "\n")
        return True


def _cds_archive(java: str) -> Path:
    """Where the class-data archive for this Kafka version and this JVM lives."""
    tag = hashlib.sha256((os.path.realpath(java) + _pom_digest()).encode()).hexdigest()[:12]
    return kafka_home() / "cds" / f"broker-{tag}.jsa"


def new_cluster_id() -> str:
    """A cluster id in Kafka's own format (a random UUID, URL-safe base64, no padding).

    Like Kafka's ``Uuid.randomUuid`` it never starts with ``-``, which a command line would take for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker(Service):
    """A single-node KRaft Kafka broker. ``bootstrap_servers`` is ``127.0.0.1:PORT``.

    ``stop()`` keeps the data folder and ports so that ``start()`` brings the same broker back with its
    topics, records and committed offsets; ``kill()`` stops it the way a crash would.
    """

    name = "kafka"

    def __init__(self, port: int = 0, controller_port: int = 0, host: str = "127.0.0.1",
                 timeout: float = 120.0, heap: str = "512m", quick_start: bool = True,
                 work_dir: Path | None = None) -> None:
        super().__init__(work_dir)
        self.bind_host = host
        self.port = port or free_port(host)
        self.controller_port = controller_port or free_port(host)
        if self.controller_port == self.port:
            self.controller_port = free_port(host)
        self.timeout = timeout
        self.heap = heap
        self.quick_start = quick_start
        self._archive_being_written: Path | None = None
        self.data_dir = self.work_dir / "data"
        self.config_path = self.work_dir / "server.properties"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.bind_host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}

    def server_properties(self) -> dict[str, str]:
        """The broker's configuration: loopback only, replication 1, fast group joins, auto-create on."""
        h = self.bind_host
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{h}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{h}:{self.port},CONTROLLER://{h}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{h}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            # One partition each: creating 50 on the first group join costs seconds and buys nothing here.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a crash (kill()) the restarted broker waits for its old registration to expire
            # before it is unfenced: 9 s by default, 5 s here (heartbeats stay within one JVM).
            "broker.session.timeout.ms": "5000",
            "broker.heartbeat.interval.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.cleaner.threads": "1",
        }

    def _write_config(self) -> None:
        text = "".join(f"{k}={v}\n" for k, v in self.server_properties().items())
        self.config_path.write_text(text)

    def _java(self, java: str, main: str, *args: str, heap: str, jit: list[str], cds: list[str]) -> list[str]:
        return [
            java, f"-Xmx{heap}", "-Xms64m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", *jit, *cds,
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", f"{libs_dir()}/*", main, *args,
        ]

    def _cds_options(self, java: str, record: bool) -> list[str]:
        """Class-data sharing: reuse the archive of the broker's classes, or record one at exit.

        Loading Kafka's classes from an archive made by an earlier run roughly halves start-up on
        this kind of machine. The archive is checked by the JVM against the class path; a stale or
        foreign one is ignored with a warning, never fatal.
        """
        archive = _cds_archive(java)
        if archive.exists():
            return [f"-XX:SharedArchiveFile={archive}"]
        if not record:
            return []
        archive.parent.mkdir(parents=True, exist_ok=True)
        self._archive_being_written = archive.with_name(f"{archive.stem}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
        return [f"-XX:ArchiveClassesAtExit={self._archive_being_written}"]

    def _adopt_archive(self) -> None:
        """After a clean exit, move the freshly written class archive into place for later starts."""
        written, self._archive_being_written = self._archive_being_written, None
        if written is None:
            return
        if written.exists() and written.stat().st_size > 0:
            os.replace(written, written.with_name(written.name.split(".")[0] + ".jsa"))
        else:
            written.unlink(missing_ok=True)

    def _format_storage(self, java: str) -> None:
        if (self.data_dir / "meta.properties").exists():
            return  # a restart: keep the data
        argv = self._java(java, "kafka.tools.StorageTool", "format", f"--cluster-id={new_cluster_id()}",
                          f"--config={self.config_path}", heap="256m", jit=QUICK_JIT,
                          cds=self._cds_options(java, record=False))
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        with open(self.log_path, "a") as log:
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise ServiceError(
                f"kafka: formatting the log folder failed ({result.returncode}):\n{tail(self.log_path)}"
            )

    def _answers(self) -> bool:
        if not tcp_answers(self.bind_host, self.port):
            return False
        from kafka import KafkaAdminClient  # lazy: only the Kafka paths need kafka-python
        from kafka.errors import KafkaConfigurationError, KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000,
                                     client_id="devservices-probe")
        except KafkaConfigurationError:
            raise  # a bug here, not a broker that is still starting
        except (KafkaError, OSError):
            return False
        try:
            admin.list_topics()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def _launch(self) -> None:
        java = check_java()
        install_jars()
        require_free_port(self.port, "kafka", self.bind_host)
        require_free_port(self.controller_port, "kafka (controller)", self.bind_host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format_storage(java)
        argv = self._java(java, "kafka.Kafka", str(self.config_path), heap=self.heap,
                          jit=QUICK_JIT if self.quick_start else [], cds=self._cds_options(java, record=True))
        self.proc = ManagedProcess("kafka broker", argv, self.log_path, cwd=self.work_dir)
        self.proc.start()
        wait_until(self._answers, timeout=self.timeout, proc=self.proc,
                   what=f"listing topics on {self.bootstrap_servers}", interval=0.2)

    def stop(self, graceful: bool = True) -> None:
        """Stop the broker (its data folder stays, so ``start()`` brings it back with its records)."""
        super().stop(graceful=graceful)
        self._adopt_archive()

    def kill(self) -> None:
        """Stop with SIGKILL, as a crash would (data written so far stays in the data folder)."""
        self.stop(graceful=False)


def start_kafka(port: int = 0, controller_port: int = 0, timeout: float = 120.0) -> KafkaBroker:
    """Start a single-node KRaft broker (free ports when 0) and wait until a client can list topics."""
    return KafkaBroker(port=port, controller_port=controller_port, timeout=timeout).start()

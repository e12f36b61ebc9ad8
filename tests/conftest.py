"""Session fixtures for the real services: Pub/Sub emulator, Cloud Storage emulator, Kafka broker.

Each fixture starts its service on loopback on free ports the first time a test asks for it, points
the matching environment variable at it for the rest of the session, and stops it (whole process
group, no JVM left behind) when the session ends, also after failures.

To run the tests against services that are already running (``python -m devservices up``), set
``DEVSERVICES_REUSE=1``: each fixture then uses PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST and
KAFKA_BOOTSTRAP_SERVERS when set, and such a broker is not ``restartable``.

Tests using a fixture are marked ``pubsub``, ``gcs`` or ``kafka`` automatically, so
``pytest -m "not kafka"`` skips the broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from devservices import KafkaBroker, PubSubEmulator, StorageEmulator
from devservices.external import ExternalKafka, ExternalPubSub, ExternalStorage

_MARK_BY_FIXTURE = {"pubsub_emulator": "pubsub", "gcs_emulator": "gcs", "kafka_broker": "kafka"}


def _reuse(var: str) -> str | None:
    """The value of ``var`` when DEVSERVICES_REUSE asks to use running services, else None."""
    if os.environ.get("DEVSERVICES_REUSE", "").lower() in ("1", "true", "yes"):
        return os.environ.get(var) or None
    return None


class _EnvPatch:
    """Set environment variables for the session and put the old values back at the end."""

    def __init__(self, values: dict[str, str]) -> None:
        self._old = {k: os.environ.get(k) for k in values}
        os.environ.update(values)

    def undo(self) -> None:
        for key, old in self._old.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _run_for_session(service: Any, env_var: str | None = None) -> Iterator[Any]:
    """Start ``service``, point ``env_var`` at its address for the session, and always clean it up."""
    try:
        service.start()
        patch = _EnvPatch({env_var: service.env()[env_var]}) if env_var else None
        try:
            yield service
        finally:
            if patch is not None:
                patch.undo()
    finally:
        service.cleanup()


@pytest.fixture(scope="session")
def pubsub_emulator() -> Iterator[PubSubEmulator | ExternalPubSub]:
    """A Pub/Sub emulator; ``.host`` ("127.0.0.1:PORT"), ``.project``. Sets PUBSUB_EMULATOR_HOST."""
    external = _reuse("PUBSUB_EMULATOR_HOST")
    if external:
        yield ExternalPubSub(host=external, project=os.environ.get("PUBSUB_PROJECT_ID", "local-project"))
        return
    yield from _run_for_session(PubSubEmulator(), "PUBSUB_EMULATOR_HOST")


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[StorageEmulator | ExternalStorage]:
    """A Cloud Storage emulator; ``.endpoint`` ("http://127.0.0.1:PORT"). Sets STORAGE_EMULATOR_HOST."""
    external = _reuse("STORAGE_EMULATOR_HOST")
    if external:
        yield ExternalStorage(endpoint=external)
        return
    yield from _run_for_session(StorageEmulator(), "STORAGE_EMULATOR_HOST")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker | ExternalKafka]:
    """A single-node KRaft Kafka broker; ``.bootstrap_servers`` ("127.0.0.1:PORT").

    ``stop()``/``start()`` restart it on the same ports and data (``kill()`` stops it like a crash);
    a test that stops it must start it again before it ends, since later tests share the broker.
    """
    external = _reuse("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield ExternalKafka(bootstrap_servers=external)
        return
    yield from _run_for_session(KafkaBroker())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a service fixture, so ``-m "not kafka"`` and friends work."""
    for item in items:
        for fixture, mark in _MARK_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, mark))

"""Handles for services someone else already runs (a dev's `python -m devservices up`, compose, CI).

They have the same endpoint attributes as the managed handles but cannot be stopped or restarted from
here: ``restartable`` is False, so tests that restart the broker skip instead of touching someone's
running service.
"""

from __future__ import annotations

from dataclasses import dataclass

from devservices._proc import ServiceError
from devservices.pubsub import DEFAULT_PROJECT


@dataclass
class ExternalPubSub:
    """A Pub/Sub emulator started elsewhere; ``host`` is ``HOST:PORT``."""

    host: str
    project: str = DEFAULT_PROJECT
    restartable = False

    def env(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.host, "PUBSUB_PROJECT_ID": self.project}


@dataclass
class ExternalStorage:
    """A Cloud Storage emulator started elsewhere; ``endpoint`` is ``http://HOST:PORT``."""

    endpoint: str
    restartable = False

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}


@dataclass
class ExternalKafka:
    """A Kafka broker started elsewhere; ``bootstrap_servers`` is ``HOST:PORT[,...]``."""

    bootstrap_servers: str
    restartable = False

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}

    def stop(self, graceful: bool = True) -> None:
        raise ServiceError("kafka: this broker was started elsewhere (DEVSERVICES_REUSE); not stopping it")

    def start(self) -> ExternalKafka:
        raise ServiceError("kafka: this broker was started elsewhere (DEVSERVICES_REUSE); cannot start it")

    def kill(self) -> None:
        self.stop(graceful=False)

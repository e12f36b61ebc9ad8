"""Install what the dev services need, idempotently, saying what it does.

Every step checks first and does nothing when its thing is already there, so CI can run it on every
run: the first run on a new machine installs, later runs cost a second or two. Downloads land outside
the clone (apt's cache, ``~/.m2``, ``~/.cache/fashion-pipeline``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

from devservices import kafka_broker, pubsub, storage
from devservices._proc import ServiceError

Say = Callable[[str], None]


def _run(argv: Sequence[str], say: Say) -> None:
    say("+ " + " ".join(argv))
    result = subprocess.run(list(argv), stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ServiceError(f"`{' '.join(argv)}` failed with exit code {result.returncode}")


def _as_root(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo"):
        return ["sudo", "-n", *argv]
    raise ServiceError(f"`{' '.join(argv)}` needs root and sudo is not available; run it as root.")


_apt_updated = False


def apt_install(packages: Sequence[str], say: Say) -> None:
    """``apt-get install -y`` the packages, running ``apt-get update`` first once per process."""
    global _apt_updated
    if shutil.which("apt-get") is None:
        raise ServiceError(f"cannot install {', '.join(packages)}: no apt-get on this machine; install by hand.")
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    if not _apt_updated:
        _run(_as_root([*env_prefix, "apt-get", "update", "-q"]), say)
        _apt_updated = True
    _run(_as_root([*env_prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]), say)


_java_checked = False


def ensure_java(say: Say) -> None:
    """Java 17+ for the Kafka broker (and the Pub/Sub emulator)."""
    global _java_checked
    if _java_checked:
        return
    java = kafka_broker.java_command()
    if java is None or kafka_broker.java_major_version(java) < kafka_broker.MIN_JAVA:
        apt_install(["openjdk-17-jre-headless"], say)
        java = kafka_broker.java_command()
    say(f"ok: java ({java})")
    _java_checked = True


def ensure_pubsub(say: Say) -> None:
    """The gcloud pubsub-emulator component.

    An apt-installed Cloud SDK refuses ``gcloud components install``; its component is the apt package
    google-cloud-cli-pubsub-emulator. A Cloud SDK installed from Google's archive uses components.
    """
    gcloud = pubsub.gcloud_path()
    if gcloud is None:
        raise ServiceError("pubsub: `gcloud` is not installed; install the Google Cloud CLI first "
                           "(https://cloud.google.com/sdk/docs/install).")
    ensure_java(say)
    if pubsub.emulator_installed():
        say("ok: gcloud pubsub-emulator component")
        return
    sdk_root = os.path.realpath(gcloud).rsplit("/bin/", 1)[0]
    if sdk_root.startswith("/usr/lib/google-cloud-sdk"):
        apt_install([pubsub.APT_PACKAGE], say)
    else:
        _run([gcloud, "components", "install", "pubsub-emulator", "beta", "--quiet"], say)
    if not pubsub.emulator_installed():
        raise ServiceError("pubsub: the install finished but the emulator is still missing")


def ensure_gcs(say: Say) -> None:
    """The PyPI storage emulator, in this interpreter's environment."""
    if storage.emulator_command() is not None:
        say("ok: gcp-storage-emulator")
        return
    _run([sys.executable, "-m", "pip", "install", storage.PYPI_PIN], say)


def ensure_kafka(say: Say) -> None:
    """Java, Maven, then the broker's jars in ~/.cache/fashion-pipeline/kafka-<version>/libs."""
    ensure_java(say)
    if kafka_broker.jars_installed():
        say(f"ok: kafka {kafka_broker.KAFKA_VERSION} jars ({kafka_broker.libs_dir()})")
        return
    if shutil.which("mvn") is None:
        apt_install(["maven"], say)
    say(f"fetching kafka {kafka_broker.KAFKA_VERSION} jars into {kafka_broker.libs_dir()}")
    kafka_broker.install_jars(verbose=True)
    say(f"ok: kafka {kafka_broker.KAFKA_VERSION} jars ({kafka_broker.libs_dir()})")


STEPS: dict[str, Callable[[Say], None]] = {"pubsub": ensure_pubsub, "gcs": ensure_gcs, "kafka": ensure_kafka}


def install(services: Sequence[str] = tuple(STEPS), say: Say = print) -> None:
    """Install what the named services need (all three by default)."""
    for name in services:
        STEPS[name](say)

"""The Google Cloud Pub/Sub emulator of the Google Cloud CLI.

``gcloud beta emulators pubsub start --host-port=H:P`` only runs the component's launcher
(``<sdk>/platform/pubsub-emulator/bin/cloud-pubsub-emulator --host=H --port=P``, which execs Java) and
stays around as its parent. By default this module runs that launcher itself: it starts a second
faster, and the Java process is then our direct child, so it is told to exit if the test run dies
(through gcloud it would be orphaned). ``launcher="gcloud"`` runs the documented gcloud command.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from devservices._base import Service
from devservices._proc import ManagedProcess, ServiceError, free_port, require_free_port, wait_until

DEFAULT_PROJECT = "local-project"
APT_PACKAGE = "google-cloud-cli-pubsub-emulator"


def gcloud_path() -> str | None:
    """Where ``gcloud`` is, or None."""
    return shutil.which("gcloud")


def emulator_launcher() -> Path | None:
    """The component's own launcher script, or None when the component is not installed."""
    gcloud = gcloud_path()
    if gcloud is None:
        return None
    sdk_root = Path(gcloud).resolve().parent.parent
    launcher = sdk_root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    return launcher if launcher.exists() else None


def emulator_installed() -> bool:
    """True when the SDK has the pubsub-emulator component (apt package or ``gcloud components``)."""
    return emulator_launcher() is not None


def check_prerequisites() -> None:
    """Raise ServiceError naming what is missing and the command that installs it."""
    if gcloud_path() is None:
        raise ServiceError("pubsub: `gcloud` is not on PATH; install the Google Cloud CLI (apt: google-cloud-cli).")
    if shutil.which("java") is None:
        raise ServiceError("pubsub: the emulator needs Java (11+) on PATH; apt-get install openjdk-17-jre-headless.")
    if not emulator_installed():
        raise ServiceError(
            "pubsub: the gcloud pubsub-emulator component is missing; run `python -m devservices install` "
            f"(apt-get install {APT_PACKAGE}, or `gcloud components install pubsub-emulator`)."
        )


class PubSubEmulator(Service):
    """A Pub/Sub emulator on loopback. ``host`` is what PUBSUB_EMULATOR_HOST must be set to."""

    name = "pubsub"

    def __init__(self, port: int = 0, project: str = DEFAULT_PROJECT, host: str = "127.0.0.1",
                 timeout: float = 60.0, launcher: str = "direct", work_dir: Path | None = None) -> None:
        super().__init__(work_dir)
        if launcher not in ("direct", "gcloud"):
            raise ValueError(f"launcher must be 'direct' or 'gcloud', got {launcher!r}")
        self.launcher = launcher
        self.bind_host = host
        self.port = port or free_port(host)
        self.project = project
        self.timeout = timeout

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the form PUBSUB_EMULATOR_HOST takes."""
        return f"{self.bind_host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}/"

    def env(self) -> dict[str, str]:
        # The last two let `gcloud pubsub ...` itself talk to the emulator.
        return {
            "PUBSUB_EMULATOR_HOST": self.host,
            "PUBSUB_PROJECT_ID": self.project,
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": self.endpoint,
            "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
        }

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint, timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _launch(self) -> None:
        check_prerequisites()
        require_free_port(self.port, "pubsub", self.bind_host)
        data_dir = self.work_dir / "data"
        data_dir.mkdir(exist_ok=True)
        if self.launcher == "gcloud":
            argv = [
                str(gcloud_path()), "beta", "emulators", "pubsub", "start",
                f"--host-port={self.host}", f"--project={self.project}", f"--data-dir={data_dir}",
                "--quiet", "--verbosity=warning",
            ]
        else:
            # What gcloud runs (its --project only labels the env.yaml it writes; the emulator
            # serves any project id).
            argv = [str(emulator_launcher()), f"--host={self.bind_host}", f"--port={self.port}"]
        env = dict(os.environ)
        env["CLOUDSDK_CORE_DISABLE_PROMPTS"] = "1"
        env.pop("PUBSUB_EMULATOR_HOST", None)
        self.proc = ManagedProcess("pubsub emulator", argv, self.log_path, env=env, cwd=self.work_dir)
        self.proc.start()
        wait_until(self._answers, timeout=self.timeout, proc=self.proc, what=f"answering HTTP on {self.host}")


def start_pubsub(port: int = 0, project: str = DEFAULT_PROJECT, timeout: float = 60.0) -> PubSubEmulator:
    """Start a Pub/Sub emulator (any free port when ``port`` is 0) and wait until it answers."""
    return PubSubEmulator(port=port, project=project, timeout=timeout).start()

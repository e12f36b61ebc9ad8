"""A Cloud Storage emulator: the PyPI package ``gcp-storage-emulator``, in memory, on loopback.

It ignores generation preconditions and keeps no object versions; tests needing those must say so.
"""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from devservices._base import Service
from devservices._proc import ManagedProcess, ServiceError, free_port, require_free_port, wait_until

PYPI_PIN = "gcp-storage-emulator==2026.7.19"


def emulator_command() -> str | None:
    """The ``gcp-storage-emulator`` script next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "gcp-storage-emulator"
    if beside.exists():
        return str(beside)
    return shutil.which("gcp-storage-emulator")


def check_prerequisites() -> None:
    """Raise ServiceError naming the install command when the emulator is missing."""
    if emulator_command() is None:
        raise ServiceError(
            f"gcs: `gcp-storage-emulator` is not installed; run `python -m devservices install` "
            f"(pip install {PYPI_PIN})."
        )


class StorageEmulator(Service):
    """A Cloud Storage emulator. ``endpoint`` is what STORAGE_EMULATOR_HOST must be set to."""

    name = "gcs"

    def __init__(self, port: int = 0, host: str = "127.0.0.1", timeout: float = 30.0,
                 work_dir: Path | None = None) -> None:
        super().__init__(work_dir)
        self.bind_host = host
        self.port = port or free_port(host)
        self.timeout = timeout

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``, the form STORAGE_EMULATOR_HOST takes."""
        return f"http://{self.bind_host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b?project=probe", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _launch(self) -> None:
        check_prerequisites()
        require_free_port(self.port, "gcs", self.bind_host)
        argv = [str(emulator_command()), "start", f"--host={self.bind_host}", f"--port={self.port}", "--in-memory"]
        self.proc = ManagedProcess("storage emulator", argv, self.log_path, cwd=self.work_dir)
        self.proc.start()
        wait_until(self._answers, timeout=self.timeout, proc=self.proc, what=f"answering HTTP on {self.endpoint}")


def start_gcs(port: int = 0, timeout: float = 30.0) -> StorageEmulator:
    """Start a Cloud Storage emulator (any free port when ``port`` is 0) and wait until it answers."""
    return StorageEmulator(port=port, timeout=timeout).start()

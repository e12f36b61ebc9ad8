"""A private Cloud Storage emulator process for the tests that must stop storage on purpose.

The session-wide emulator comes from tests/conftest.py (``gcs_emulator``); tests that need storage
to go away mid-test start their own here, on a free port, and stop it themselves.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

EMULATOR = Path(sys.executable).with_name("gcp-storage-emulator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(endpoint: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1).read()
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"storage emulator at {endpoint} did not answer") from None
            time.sleep(0.05)  # polling interval of a deadline-bounded wait


class PrivateEmulator:
    """``gcp-storage-emulator`` on a free loopback port; a context manager.

    In memory by default; with ``data_dir`` it keeps objects on disk there, so that a stop and a
    start (same port) bring the same buckets back, as real storage would after an outage.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateEmulator:
        argv = [str(EMULATOR), "start", "--host=127.0.0.1", f"--port={self.port}"]
        if self.data_dir is None:
            argv.append("--in-memory")
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(argv, cwd=self.data_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_up(self.endpoint)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> PrivateEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_for(endpoint: str) -> Any:
    """A storage client bound to one emulator endpoint (not to the process environment)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test-project", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": endpoint})


def upload_folder(client: Any, bucket_name: str, prefix: str, folder: Path) -> str:
    """Upload every file of ``folder`` under ``gs://bucket/prefix`` (bucket created if needed)."""
    bucket = client.bucket(bucket_name)
    if not bucket.exists():
        client.create_bucket(bucket_name)
    for path in sorted(folder.iterdir()):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))
    return f"gs://{bucket_name}/{prefix}"

"""What every dev service handle shares: a work folder, start/stop, context-manager use, env exports."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from devservices._proc import ManagedProcess


class Service:
    """Base of the service handles. Subclasses fill in ``_launch`` (spawn and wait until it answers)."""

    name = "service"
    # Managed handles can be stopped and started again by tests (external ones cannot).
    restartable = True

    def __init__(self, work_dir: Path | None = None) -> None:
        self._own_work_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"devservices-{self.name}-")) if work_dir is None else work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.work_dir / f"{self.name}.log"
        self.proc: ManagedProcess | None = None
        self.startup_seconds: float | None = None
        atexit.register(self._atexit)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the process and return once it answers real requests (raises ServiceError if not)."""
        if self.running:
            return self
        begun = time.monotonic()
        self._launch()
        self.startup_seconds = time.monotonic() - begun
        return self

    def _launch(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def stop(self, graceful: bool = True) -> None:
        """Terminate the whole process group and wait until it is gone. Safe to call twice."""
        if self.proc is not None:
            self.proc.stop(graceful=graceful)
            self.proc = None

    def cleanup(self) -> None:
        """Stop, then delete the work folder (logs and any data) if this handle created it."""
        self.stop()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _atexit(self) -> None:
        # Last line of defence when a caller forgot stop(): never leave a JVM behind.
        if self.proc is not None:
            self.proc.stop(timeout=10)

    def env(self) -> dict[str, str]:
        """Environment variables that point clients at this service."""
        return {}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()

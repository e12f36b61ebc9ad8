"""Process plumbing shared by every dev service: ports, spawning, polling with a deadline, stopping.

Each service runs in its own process group (``start_new_session``) because some of them fork
children that outlive their parent (``gcloud`` leaves its Java emulator behind): stopping a service
means signalling the whole group and waiting until no member of it is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO


class ServiceError(RuntimeError):
    """A dev service could not be installed, started or stopped; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port that is free right now (another process may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host:port`` or listens on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers bind with SO_REUSEADDR, so connections in TIME_WAIT (left by a restart or our own
        # readiness probes) do not make a port busy; only another listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def require_free_port(port: int, service: str, host: str = "127.0.0.1") -> None:
    """Fail early and clearly rather than let a service die with a bind error deep in its log."""
    if port_in_use(port, host):
        raise ServiceError(
            f"{service}: port {host}:{port} is already in use (another instance running?). "
            "Stop it, or pick another port (0 = any free port)."
        )


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages (empty when there is no log yet)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux/glibc
    _LIBC = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child if the parent dies without stopping it (crashed test run)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


class ManagedProcess:
    """One service process (and its process group) with its output going to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        """Spawn the process in a new session, appending its output to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # PDEATHSIG is tied to the creating thread, so only use it from the main thread.
        preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        try:
            self._popen = subprocess.Popen(
                self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True, preexec_fn=preexec,
            )
        except OSError as exc:
            self._log.close()
            raise ServiceError(f"{self.name}: cannot run {self.argv[0]!r}: {exc}") from exc

    def alive(self) -> bool:
        """True while the leader process has not exited."""
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def _group_exists(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout: float = 30.0, graceful: bool = True) -> None:
        """Signal the whole process group (TERM, then KILL after ``timeout``) and wait for it to be gone.

        ``graceful=False`` sends KILL at once, which is how a crash looks to clients.
        """
        popen = self._popen
        if popen is None:
            return
        pgid = popen.pid  # start_new_session makes the leader's pid the group id
        first = signal.SIGTERM if graceful else signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, first)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            popen.poll()
            if not self._group_exists(pgid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10
            while self._group_exists(pgid) and time.monotonic() < kill_deadline:
                popen.poll()
                time.sleep(0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._popen = None


def wait_until(ready: Callable[[], bool], *, timeout: float, proc: ManagedProcess, what: str,
               interval: float = 0.1) -> float:
    """Poll ``ready`` until it is true; fail with the log tail if the process exits or time runs out.

    Returns the seconds waited.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if not proc.alive():
            raise ServiceError(
                f"{proc.name} exited with code {proc.returncode()} before {what}.\n"
                f"--- last lines of {proc.log_path} ---\n{tail(proc.log_path)}"
            )
        if ready():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            proc.stop(timeout=10)
            raise ServiceError(
                f"{proc.name} did not become ready ({what}) within {timeout:.0f} s.\n"
                f"--- last lines of {proc.log_path} ---\n{tail(proc.log_path)}"
            )
        time.sleep(interval)

"""Serve a function folder with ``functions-framework`` in a subprocess, as ``make run`` and the tests do.

Each server gets a free loopback port, its own process group (stopped as a whole) and a log file;
the environment is the pipeline's settings written out as the variables of ``common.settings``,
so the subprocess configures itself exactly as a deployed function would.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import Self

from common.settings import ENV_VARS, Settings
from devservices._proc import ManagedProcess, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as environment variables (the inverse of :meth:`Settings.from_env`)."""
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        env[ENV_VARS[f.name]] = ",".join(value) if isinstance(value, tuple) else str(value)
    return env


def functions_framework_command() -> str:
    """The ``functions-framework`` script beside this interpreter (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "functions-framework"
    return str(beside) if beside.exists() else "functions-framework"


class FunctionServer:
    """One function served by functions-framework on ``127.0.0.1:<port>``."""

    def __init__(self, name: str, target: str, source: Path, *, signature_type: str = "http",
                 env: Mapping[str, str] | None = None, log_dir: Path, port: int = 0) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        argv = [functions_framework_command(), "--target", target, "--source", str(source),
                "--signature-type", signature_type, "--host", "127.0.0.1", "--port", str(self.port)]
        full_env = dict(os.environ)
        full_env.update(env or {})
        # The repo root makes `common` importable, as packaging does by copying it into the folder.
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p)
        self.proc = ManagedProcess(f"{name} function", argv, log_dir / f"{name}.log", env=full_env, cwd=REPO_ROOT)

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

    def _answers(self) -> bool:
        # Any HTTP answer (even 400/405 for a CloudEvent function) means the server is up.
        try:
            with urllib.request.urlopen(self.url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 60.0) -> Self:
        """Spawn the server and return once it answers HTTP (raises ServiceError with its log if not)."""
        self.proc.start()
        wait_until(self._answers, timeout=timeout, proc=self.proc, what=f"answering HTTP on {self.url}")
        return self

    def stop(self) -> None:
        self.proc.stop(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""Helpers for the offline deploy checks: the parsed Terraform, the tools venv, packaged functions.

No provider can be downloaded here, so these checks read the configuration itself (python-hcl2), run
the offline tools (terraform fmt, checkov) and run the packaged functions for real.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
TOOLS_VENV = Path(os.environ.get("TOOLS_VENV", Path.home() / ".cache" / "fashion-pipeline" / "tools-venv"))
VENV_PYTHON = Path(sys.executable)

# The decorator each entry point must carry, by function folder: it decides how functions-framework
# calls it (HTTP request vs. CloudEvent), and Terraform's wiring assumes exactly these.
ENTRY_POINTS = {"ingest": "http", "predict": "cloud_event"}


def tool(name: str) -> Path:
    """A binary of the deploy tools venv; skips the test when the venv was never installed."""
    path = TOOLS_VENV / "bin" / name
    if not path.exists():
        pytest.skip(f"{path} missing: run scripts/install-deploy-tools.sh (make test runs it)")
    return path


# --- Terraform as data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TerraformConfig:
    """Blocks of every .tf file of one module, keyed the way Terraform addresses them."""

    resources: dict[tuple[str, str], dict[str, Any]]
    variables: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    terraform: list[dict[str, Any]]
    text: str

    def resource(self, rtype: str, name: str) -> dict[str, Any]:
        assert (rtype, name) in self.resources, f"terraform has no {rtype}.{name}"
        return self.resources[(rtype, name)]

    def of_type(self, rtype: str) -> dict[str, dict[str, Any]]:
        return {name: body for (t, name), body in self.resources.items() if t == rtype}


def load_terraform(folder: Path = TERRAFORM_DIR) -> TerraformConfig:
    """Parse every ``*.tf`` of ``folder`` with python-hcl2 (plain values, no comments, no quotes)."""
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is a dev dependency (python-hcl2==8.1.4)")
    options = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    variables: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, Any]] = {}
    local_values: dict[str, Any] = {}
    terraform: list[dict[str, Any]] = []
    texts = []
    for path in sorted(folder.glob("*.tf")):
        text = path.read_text()
        texts.append(text)
        doc = hcl2.loads(text, serialization_options=options)
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for name, body in named.items():
                    assert (rtype, name) not in resources, f"{rtype}.{name} declared twice"
                    resources[(rtype, name)] = body
        for block in doc.get("variable", []):
            variables.update(block)
        for block in doc.get("output", []):
            outputs.update(block)
        for block in doc.get("locals", []):
            local_values.update(block)
        terraform.extend(doc.get("terraform", []))
    return TerraformConfig(resources, variables, outputs, local_values, terraform, "\n".join(texts))


def single(block: Any) -> dict[str, Any]:
    """The body of a nested block that occurs once (python-hcl2 gives a list of bodies)."""
    assert isinstance(block, list) and len(block) == 1, f"expected one block, got {block!r}"
    return block[0]


def references(expression: str) -> list[str]:
    """Terraform addresses an expression names (``local.x``, ``var.y``, ``google_a.b[...]``)."""
    return re.findall(r"\b(?:local|var|google_[a-z0-9_]+)\.[A-Za-z0-9_]+(?:\[\"[^\"]+\"\])?", expression)


# --- Python source as data -----------------------------------------------------------------------


def decorated_functions(main_py: Path) -> dict[str, list[str]]:
    """Top-level function name -> its decorators as dotted text (``functions_framework.http``)."""
    tree = ast.parse(main_py.read_text(), filename=str(main_py))
    found: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = [ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]
    return found


# --- running packaged functions ------------------------------------------------------------------

# Runs inside the child interpreter: drops every way the repo's own `common` could be found (the repo
# root on sys.path, an editable-install finder), puts the unpacked package first, then either imports
# main and reports where things came from, or starts the functions-framework CLI.
_ISOLATE = r"""
import json, os, sys
pkg, repo, mode, *rest = sys.argv[1:]
venv = os.path.join(repo, ".venv")
def foreign(p):
    p = os.path.realpath(p or ".")
    return (p == repo or p.startswith(repo + os.sep)) and not p.startswith(venv + os.sep)
sys.path[:] = [pkg] + [p for p in sys.path if not foreign(p)]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")]
if mode == "import":
    import main, common
    print(json.dumps({"main": main.__file__, "common": common.__file__, "names": sorted(vars(main)),
                      "path": sys.path}))
else:
    from functions_framework._cli import _cli
    sys.argv = ["functions-framework", *rest]
    _cli()
"""


def unpack(zip_path: Path, into: Path) -> Path:
    """Extract a package zip into a fresh folder, as Cloud Build does with the uploaded source."""
    into.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(into)
    return into


def isolated_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: no PYTHONPATH, nothing of the caller's settings unless given."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8"}
    env.update(extra or {})
    return env


def import_isolated(pkg: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``import main`` from ``pkg`` with only the package and the venv's site-packages importable."""
    return subprocess.run(
        [str(VENV_PYTHON), "-I", "-c", _ISOLATE, str(pkg), str(REPO.resolve()), "import"],
        cwd=pkg, env=env, capture_output=True, text=True, timeout=120,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Wait until ``condition()`` is true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        # Bounded back-off between checks of a condition (not a wait for a fixed time).
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP exchange; returns (status, body) also for 4xx/5xx answers."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@contextmanager
def serve_package(pkg: Path, target: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """Serve ``pkg/main.py`` with ``functions-framework --target <target> --source main.py``; yield its URL."""
    port = free_port()
    argv = [str(VENV_PYTHON), "-I", "-c", _ISOLATE, str(pkg), str(REPO.resolve()), "serve",
            "--target", target, "--source", "main.py", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=pkg, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{target} server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                http("GET", url, timeout=2)
                return True
            except (urllib.error.URLError, OSError):
                return False

        poll(answers, timeout=60, what=f"{target} from the package answering on {url}")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)


def copy_repo_subset(into: Path, *parts: str) -> Path:
    """Copy the named top-level files and folders of the repo into ``into`` (a scratch repo root)."""
    into.mkdir(parents=True, exist_ok=True)
    for part in parts:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, into / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, into / part)
    return into


# --- the environment Terraform gives a function, evaluated --------------------------------------

_INTERPOLATION = re.compile(r"\$\{((?:[^{}]|\{[^{}]*\})*)\}")


def terraform_env(tf: TerraformConfig, function: str, *, variables: dict[str, Any] | None = None,
                  known: dict[str, str] | None = None) -> dict[str, str]:
    """The environment_variables of ``function`` with every variable at its default (or ``variables``).

    Only the expression forms this configuration uses are understood; a new form fails loudly here
    rather than being guessed. ``known`` gives values of things only a real apply knows (resource
    attributes such as topic names), keyed by their expression text.
    """
    values: dict[str, Any] = {name: body.get("default") for name, body in tf.variables.items()}
    values.update(variables or {})
    known = known or {}

    def evaluate(expr: str) -> str:
        expr = expr.strip()
        if expr in known:
            return known[expr]
        if m := re.fullmatch(r"var\.([a-z0-9_]+)", expr):
            return str(values[m.group(1)])
        if m := re.fullmatch(r"tostring\(var\.([a-z0-9_]+)\)", expr):
            return str(values[m.group(1)])
        if m := re.fullmatch(r'join\("(.*)", var\.([a-z0-9_]+)\)', expr):
            return m.group(1).join(values[m.group(2)])
        if m := re.fullmatch(r"local\.([a-z0-9_]+)", expr):
            return template(tf.locals[m.group(1)])
        raise AssertionError(f"deploy_helpers.terraform_env does not understand ${{{expr}}}")

    def template(text: Any) -> str:
        assert isinstance(text, str), f"not a string expression: {text!r}"
        return _INTERPOLATION.sub(lambda m: evaluate(m.group(1)), text)

    service = single(tf.resource("google_cloudfunctions2_function", function)["service_config"])
    env: dict[str, str] = {}
    for ref in references(service["environment_variables"]):
        for key, value in tf.locals[ref.removeprefix("local.")].items():
            env[key] = template(value)
    return env

"""Build what Cloud Functions uploads for one function: a folder and a deterministic zip.

Cloud Functions (gen2) deploys only the uploaded folder, so a function folder in this repo cannot
deploy as-is: it imports the shared ``common/`` package from the repo root. This module is the one
build step that makes a deployable unit out of ``functions/<name>/``:

* the function's own files (``main.py`` and anything beside it),
* a copy of the ``common/`` package (with its data files, e.g. the JSON schemas),
* a ``requirements.txt`` that pins every serving dependency, transitive ones included.

Pins come from ``constraints.txt`` at the repo root (the full ``pip freeze`` pin set) when it exists;
the dependency closure of ``[project].dependencies`` in ``pyproject.toml`` is walked through the
installed distributions' metadata, so only serving packages are listed (never TensorFlow, which is
an optional extra for training). Without ``constraints.txt`` only the direct pins of
``pyproject.toml`` are written.

The zip is byte-for-byte reproducible (sorted entries, fixed timestamps and modes), so its MD5,
which Terraform uses to name the uploaded object, changes only when the code or the pins change.

    python -m pipeline.packaging --out build/functions            # both functions
    python -m pipeline.packaging --out build/functions --function predict
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import shutil
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from common.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("ingest", "predict")
SHARED_PACKAGE = "common"

# Never part of a deployable folder: caches, compiled files, tests, and a hand-written requirements file
# (the generated one is the only source of pins).
_SKIP_DIRS = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests"})
_SKIP_SUFFIXES = frozenset({".pyc", ".pyo"})
_SKIP_NAMES = frozenset({"requirements.txt", ".DS_Store", ".gcloudignore"})

# Training-only packages: a serving package that drags one in would make every cold start pay for it.
FORBIDDEN_SERVING_PACKAGES = frozenset({"tensorflow", "tensorflow-cpu", "tensorflow-intel", "keras", "tf-keras"})

# The earliest date a zip can store; any fixed value makes the archive reproducible.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class PackagingError(ConfigurationError):
    """The repo cannot be turned into a deployable function (missing files, pins out of sync)."""

    code = "packaging_error"


def _read_pyproject(repo_root: Path) -> dict:
    with (repo_root / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def _read_constraints(path: Path) -> dict[str, str]:
    """Map canonical name -> pinned version for every ``name==version`` line of a pip freeze file.

    Editable and URL lines (``-e .``, ``pkg @ file://...``) are the project itself or local builds: they
    cannot be installed by the Cloud Functions builder, so they are ignored rather than copied.
    """
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or " @ " in line or "==" not in line:
            continue
        req = Requirement(line)
        (spec,) = tuple(req.specifier)
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _closure(roots: Iterable[Requirement]) -> dict[str, str]:
    """Canonical name -> project name of every distribution the roots need in this interpreter.

    Markers are evaluated for the running Python, which :func:`serving_requirements` checks is the one the
    functions run on; extras requested along the way (``google-api-core[grpc]``) are followed.
    """
    seen: dict[str, set[str]] = {}
    names: dict[str, str] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        extras = set(req.extras)
        if key in seen and extras <= seen[key]:
            continue
        seen.setdefault(key, set()).update(extras)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise PackagingError(
                f"{req.name} is a serving dependency but is not installed here; run `make install` first"
            ) from exc
        names[key] = dist.metadata["Name"]
        for spec in dist.requires or ():
            child = Requirement(spec)
            envs = [{"extra": extra} for extra in ("", *sorted(seen[key]))]
            if child.marker is None or any(child.marker.evaluate(env) for env in envs):
                todo.append(child)
    return names


def serving_requirements(repo_root: Path = REPO_ROOT) -> list[str]:
    """The pinned ``requirements.txt`` lines for the functions, sorted by name.

    Raises :class:`PackagingError` when a needed package has no pin, when the installed version differs
    from its pin (the environment is out of sync, so the closure could be wrong), or when a training-only
    package would be deployed.
    """
    project = _read_pyproject(repo_root)["project"]
    requires_python = SpecifierSet(project.get("requires-python", ""))
    running = "{}.{}.{}".format(*sys.version_info[:3])
    if running not in requires_python:
        raise PackagingError(f"package with the project's Python ({requires_python}), not {running}")
    roots = [Requirement(dep) for dep in project["dependencies"]]
    constraints_file = repo_root / "constraints.txt"
    if not constraints_file.exists():
        # Before the full pin set exists, the direct pins are the best available.
        lines = [str(req) for req in roots]
    else:
        pins = _read_constraints(constraints_file)
        lines = []
        for key, name in _closure(roots).items():
            if key not in pins:
                raise PackagingError(f"{name} is needed to serve but has no pin in {constraints_file.name}")
            installed = importlib.metadata.version(name)
            if installed != pins[key]:
                raise PackagingError(
                    f"{name} is {installed} here but pinned to {pins[key]}; run `make install` first"
                )
            lines.append(f"{name}=={pins[key]}")
    forbidden = sorted(
        {canonicalize_name(Requirement(line).name) for line in lines} & FORBIDDEN_SERVING_PACKAGES
    )
    if forbidden:
        raise PackagingError(f"training-only packages would be deployed: {', '.join(forbidden)}")
    return sorted(lines, key=lambda line: canonicalize_name(Requirement(line).name))


def _files(root: Path) -> list[Path]:
    """Every file under ``root`` that belongs in a deployment, relative and sorted."""
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]) or not path.is_file():
            continue
        if path.suffix in _SKIP_SUFFIXES or path.name in _SKIP_NAMES or path.name in _SKIP_DIRS:
            continue
        out.append(rel)
    return sorted(out)


def _write_zip(folder: Path, target: Path) -> None:
    """Zip ``folder`` reproducibly: sorted entries, fixed date, fixed permissions, fixed compression."""
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        # The folder was built from scratch by package_function, so everything in it ships.
        for rel in sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(rel.as_posix(), date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # Unix, whatever machine builds it
            zf.writestr(info, (folder / rel).read_bytes(), compresslevel=9)
    tmp.replace(target)


def package_function(name: str, out_dir: Path | str, repo_root: Path = REPO_ROOT) -> Path:
    """Build ``<out_dir>/<name>/`` (the deployable folder) and ``<out_dir>/<name>.zip``; return the zip.

    The folder is rebuilt from scratch each time so files deleted from the repo do not linger in it.
    """
    source = repo_root / "functions" / name
    if not (source / "main.py").is_file():
        raise PackagingError(f"functions/{name}/main.py does not exist")
    if (source / SHARED_PACKAGE).exists():
        raise PackagingError(f"functions/{name}/{SHARED_PACKAGE} would shadow the shared package")
    out = Path(out_dir)
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for rel in _files(source):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, folder / rel)
    shared = repo_root / SHARED_PACKAGE
    for rel in _files(shared):
        (folder / SHARED_PACKAGE / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / rel, folder / SHARED_PACKAGE / rel)
    header = [
        "# Generated by pipeline/packaging.py from pyproject.toml and constraints.txt: do not edit.",
        "# Serving dependencies of the Cloud Function, transitive ones included, for CPython 3.11 on Linux.",
    ]
    (folder / "requirements.txt").write_text("\n".join([*header, *serving_requirements(repo_root)]) + "\n")
    target = out / f"{name}.zip"
    _write_zip(folder, target)
    return target


def md5_hex(path: Path) -> str:
    """The MD5 that Terraform's ``filemd5()`` reports for ``path`` (it names the uploaded object)."""
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build the named functions (default: all) into ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.packaging", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="build/functions", help="output folder (default: build/functions)")
    parser.add_argument(
        "--function", action="append", choices=FUNCTIONS, dest="functions", help="build only this one (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        for name in args.functions or FUNCTIONS:
            path = package_function(name, args.out)
            print(f"{name}: {path} md5={md5_hex(path)} bytes={path.stat().st_size}")
    except PackagingError as exc:
        print(f"packaging failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

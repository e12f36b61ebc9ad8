"""cloudbuild.yaml: it parses, its steps point at things that exist, and its shell logic does what it says.

Cloud Build itself cannot run here. Its substitution rules are simple and documented ($$ is a literal
$, ${_NAME} a user substitution, $PROJECT_ID and friends built-ins), so the step scripts are expanded
the same way and run with sh. Terraform is replaced by a stub that records its arguments in the one
test that runs a Terraform step: no provider can be downloaded here, so the real one cannot plan.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import REPO, load_terraform

yaml = pytest.importorskip("yaml", reason="PyYAML is a dev dependency (PyYAML==6.0.4)")

BUILTINS = {"PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA", "SHORT_SHA",
            "REVISION_ID", "BRANCH_NAME", "TAG_NAME", "REPO_NAME", "REPO_FULL_NAME", "SERVICE_ACCOUNT_EMAIL",
            "SERVICE_ACCOUNT"}
_SUBST = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def _steps(build: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in build["steps"]}


def _script(step: dict[str, Any]) -> str:
    return "\n".join(str(a) for a in step.get("args", []))


def expand(text: str, values: dict[str, str]) -> str:
    """Cloud Build's substitution: $$ -> $, ${X} and $X -> values[X] (KeyError if X is unknown)."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return values[match.group(1) or match.group(2)]
    return _SUBST.sub(one, text)


def test_every_step_is_named_and_ordered(build: dict[str, Any]) -> None:
    ids = [step.get("id") for step in build["steps"]]
    assert all(ids) and len(set(ids)) == len(ids), ids
    seen: set[str] = set()
    for step in build["steps"]:
        for dep in step.get("waitFor", []):
            assert dep in seen, f"{step['id']} waits for {dep}, which is not an earlier step"
        seen.add(step["id"])
    assert ids.index("test") < ids.index("package") < ids.index("terraform-plan") < ids.index("terraform-apply")


def test_images_are_pinned_by_version(build: dict[str, Any]) -> None:
    for step in build["steps"]:
        image, _, tag = step["name"].rpartition(":")
        pinned = re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag)
        assert image and pinned, f"{step['id']}: {step['name']} is not pinned to a version"


def test_test_step_runs_the_readme_test_command(build: dict[str, Any]) -> None:
    script = _script(_steps(build)["test"])
    assert re.search(r"^\s*make test\s*$", script, re.M), script
    assert re.search(r"^test:", (REPO / "Makefile").read_text(), re.M)


def test_package_step_builds_what_terraform_uploads(build: dict[str, Any]) -> None:
    script = _script(_steps(build)["package"])
    assert "python -m pipeline.packaging --out build/functions" in script
    assert (REPO / "pipeline" / "packaging.py").is_file()
    # Terraform reads the zips from ../build/functions relative to terraform/, i.e. the same folder.
    assert "${path.module}/../build/functions" in load_terraform().locals["source_dir"]


def test_terraform_steps_run_in_the_terraform_folder_with_a_version_it_accepts(build: dict[str, Any]) -> None:
    tf = load_terraform()
    required = tf.terraform[0]["required_version"]
    low, high = re.findall(r"[\d.]+", required)
    as_tuple = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
    for step_id in ("terraform-init", "terraform-plan", "terraform-apply"):
        step = _steps(build)[step_id]
        assert (REPO / step["dir"] / "main.tf").is_file()
        version = step["name"].rpartition(":")[2]
        assert as_tuple(low) <= as_tuple(version) < as_tuple(high), f"{version} outside {required}"
    assert "backend-config" in _script(_steps(build)["terraform-init"])
    assert "_TF_STATE_BUCKET" in _script(_steps(build)["terraform-init"])


def test_substitutions_are_declared_used_and_documented(build: dict[str, Any]) -> None:
    declared = set(build["substitutions"])
    assert all(name.startswith("_") for name in declared)
    text = "\n".join(_script(step) for step in build["steps"])
    used = {m.group(1) or m.group(2) for m in _SUBST.finditer(text) if m.group(0) != "$$"}
    # Anything else after a single $ would make Cloud Build reject the build.
    assert used <= declared | BUILTINS, f"unknown substitutions: {used - declared - BUILTINS}"
    assert declared <= used, f"declared but unused: {declared - used}"
    header = (REPO / "cloudbuild.yaml").read_text().split("substitutions:")[0]
    for name in declared:
        assert f"#   {name}" in header, f"{name} is not documented in the header"


def test_training_is_optional_and_uses_the_trainer_cli(build: dict[str, Any]) -> None:
    script = _script(_steps(build)["train"])
    assert '"${_TRAIN}" != "true"' in script and build["substitutions"]["_TRAIN"] == "false"
    assert ".venv/bin/python -m trainer" in script
    assert (REPO / "trainer" / "__main__.py").is_file()
    cli = pytest.importorskip("trainer.cli")
    args = cli.build_parser().parse_args(["--run", "b-1", "--out", "gs://bucket/fashion-cnn/b-1"])
    assert args.out == "gs://bucket/fashion-cnn/b-1" and args.run == "b-1"


def _run_plan_step(build: dict[str, Any], tmp_path: Path, *, model_path_sub: str = "",
                   trained: str | None = None, deployed_uri: str | None = None) -> list[str]:
    """Run the terraform-plan step's script with a stub terraform; return the plan arguments."""
    work = tmp_path / "workspace"
    (work / "terraform").mkdir(parents=True)
    (work / "build").mkdir()
    if trained:
        (work / "build" / "model_path.txt").write_text(trained + "\n")
    stub = tmp_path / "bin"
    stub.mkdir()
    calls = tmp_path / "calls"
    output = f'echo "{deployed_uri}"' if deployed_uri else "exit 1"
    (stub / "terraform").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = output ]; then {output}; exit $?; fi\n'
        f'for a in "$@"; do printf "%s\\n" "$a"; done > {calls}\n'
    )
    (stub / "terraform").chmod(0o755)
    values = {**{k: str(v) for k, v in build["substitutions"].items()}, "_MODEL_PATH": model_path_sub,
              "PROJECT_ID": "my-project", "BUILD_ID": "b-123"}
    step = _steps(build)["terraform-plan"]
    script = expand(step["args"][-1], values)
    done = subprocess.run(["sh", *[expand(a, values) for a in step["args"][:-1]], script],
                          cwd=work / "terraform", env={"PATH": f"{stub}{os.pathsep}/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines()


def test_plan_serves_the_model_just_trained(build: dict[str, Any], tmp_path: Path) -> None:
    args = _run_plan_step(build, tmp_path, trained="fashion-cnn/b-123", deployed_uri="gs://m/fashion-cnn/old")
    assert args[:3] == ["plan", "-input=false", "-out=tfplan"]
    assert "project=my-project" in args
    assert "model_path=fashion-cnn/b-123" in args


def test_plan_keeps_the_deployed_model_unless_told_otherwise(build: dict[str, Any], tmp_path: Path) -> None:
    # A build without training must not roll the model back to the default.
    kept = _run_plan_step(build, tmp_path / "a", deployed_uri="gs://proj-fashion-models/fashion-cnn/b-99")
    assert "model_path=fashion-cnn/b-99" in kept
    chosen = _run_plan_step(build, tmp_path / "b", model_path_sub="fashion-cnn/b-42",
                            deployed_uri="gs://proj-fashion-models/fashion-cnn/b-99")
    assert "model_path=fashion-cnn/b-42" in chosen
    first = _run_plan_step(build, tmp_path / "c")
    assert not [a for a in first if a.startswith("model_path=")], "first deployment uses the default"


def test_no_backend_or_state_is_committed() -> None:
    # Cloud Build writes backend.tf; a committed one would make `terraform init` on a laptop ask for a bucket.
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (gcloud builds submit uploads the tree without .git)")
    tracked = subprocess.run(["git", "ls-files", "terraform"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert "terraform/main.tf" in tracked
    assert not [p for p in tracked if p.endswith(("backend.tf", ".tfstate", ".tfstate.backup", "tfplan"))]

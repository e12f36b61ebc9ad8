"""The packaging step: what Cloud Functions uploads must run on its own, and change only with the code.

Each packaged function is unzipped into a fresh folder and run with only that folder and the venv's
site-packages importable (the repo root and any editable-install finder are removed), so `common`
must come from the package, exactly as on Cloud Functions where nothing else is uploaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    ENTRY_POINTS,
    REPO,
    VENV_PYTHON,
    copy_repo_subset,
    http,
    import_isolated,
    isolated_env,
    load_terraform,
    serve_package,
    terraform_env,
    unpack,
)

from pipeline.packaging import FORBIDDEN_SERVING_PACKAGES, md5_hex, package_function, serving_requirements

BASE_ENV = {"BROKER": "pubsub", "GCP_PROJECT": "deploy-test", "LOG_LEVEL": "WARNING"}


def _needs(name: str) -> None:
    # Only until the function exists: the lead makes sure both do, and then these tests run.
    if not (REPO / "functions" / name / "main.py").exists():
        pytest.skip(f"functions/{name}/main.py does not exist yet")


def _scratch_repo(tmp_path: Path, main_py: str) -> Path:
    """A copy of the repo's packaging inputs with one tiny HTTP function, to change code freely."""
    root = copy_repo_subset(tmp_path / "repo", "pyproject.toml", "constraints.txt", "common")
    (root / "functions" / "demo").mkdir(parents=True)
    (root / "functions" / "demo" / "main.py").write_text(main_py)
    return root


DEMO = "import functions_framework\n\n\n@functions_framework.http\ndef demo(request):\n    return 'ok'\n"


def test_zip_is_byte_identical_across_builds_and_changes_with_the_code(tmp_path: Path) -> None:
    root = _scratch_repo(tmp_path, DEMO)
    # Junk a developer leaves around must not reach the upload (nor change its hash).
    (root / "functions" / "demo" / "__pycache__").mkdir()
    (root / "functions" / "demo" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"junk")
    (root / "functions" / "demo" / "requirements.txt").write_text("tensorflow\n")

    first = package_function("demo", tmp_path / "a", repo_root=root)
    # Touching files (new mtimes) and rebuilding elsewhere must give the same bytes.
    (root / "functions" / "demo" / "main.py").write_text(DEMO)
    second = package_function("demo", tmp_path / "b", repo_root=root)
    assert first.read_bytes() == second.read_bytes()

    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
        assert names == sorted(names)
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert "main.py" in names and "requirements.txt" in names and "common/settings.py" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert "tensorflow" not in zf.read("requirements.txt").decode()

    (root / "functions" / "demo" / "main.py").write_text(DEMO + "# a code change\n")
    third = package_function("demo", tmp_path / "c", repo_root=root)
    assert md5_hex(third) != md5_hex(first)
    assert md5_hex(first) == hashlib.md5(first.read_bytes(), usedforsecurity=False).hexdigest()


def test_common_data_files_travel_with_the_package(tmp_path: Path) -> None:
    root = _scratch_repo(tmp_path, DEMO)
    with zipfile.ZipFile(package_function("demo", tmp_path / "out", repo_root=root)) as zf:
        names = set(zf.namelist())
    wanted = {f"common/{p.relative_to(REPO / 'common').as_posix()}" for p in (REPO / "common").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert wanted, "common/ is empty?"
    assert wanted <= names, f"missing from the package: {sorted(wanted - names)}"


def test_requirements_pin_every_serving_package_and_no_training_one() -> None:
    lines = serving_requirements()
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert all(line.count("==") == 1 and not line.startswith("-") for line in lines), lines
    assert not names & FORBIDDEN_SERVING_PACKAGES
    # The direct dependencies the functions import, and transitive ones that pip would otherwise float.
    for needed in ("functions-framework", "google-cloud-pubsub", "google-cloud-storage", "ai-edge-litert",
                   "numpy", "protobuf", "grpcio", "flask"):
        assert needed in names, f"{needed} not pinned for the functions"
    constraints = REPO / "constraints.txt"
    if constraints.exists():
        pins = {ln.split("==")[0].lower().replace("_", "-"): ln.split("==")[1].strip()
                for ln in constraints.read_text().splitlines() if "==" in ln and not ln.startswith(("#", "-"))}
        for line in lines:
            name, version = line.split("==")
            assert pins[name.lower().replace("_", "-")] == version, f"{line} disagrees with constraints.txt"


def test_cli_builds_both_functions(tmp_path: Path) -> None:
    for name in ENTRY_POINTS:
        _needs(name)
    import subprocess

    out = tmp_path / "functions"
    done = subprocess.run([str(VENV_PYTHON), "-m", "pipeline.packaging", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ENTRY_POINTS:
        assert (out / f"{name}.zip").is_file()
        assert f"{name}: " in done.stdout and md5_hex(out / f"{name}.zip") in done.stdout


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_packaged_main_imports_with_common_from_the_package(name: str, tmp_path: Path) -> None:
    _needs(name)
    pkg = unpack(package_function(name, tmp_path / "build"), tmp_path / "unpacked")
    done = import_isolated(pkg, isolated_env({**BASE_ENV, "MODEL_URI": str(pkg / "no-model-needed-at-import")}))
    assert done.returncode == 0, f"import main failed from the package:\n{done.stderr[-4000:]}"
    where = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(where["main"]).parent == pkg
    assert Path(where["common"]).is_relative_to(pkg), where["common"]
    assert name in where["names"]


def test_packaged_ingest_serves_health_over_http(tmp_path: Path) -> None:
    _needs("ingest")
    pkg = unpack(package_function("ingest", tmp_path / "build"), tmp_path / "unpacked")
    env = isolated_env({**BASE_ENV, "REQUESTS_TOPIC": "deploy-requests"})
    with serve_package(pkg, "ingest", env, tmp_path / "ingest.log") as url:
        status, body = http("GET", url)
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["broker"]["requests_topic"] == "deploy-requests"


def _pull(project: str, subscription: str, want: int, timeout: float) -> list[Any]:
    """Pull from the emulator until ``want`` messages arrived (acknowledging them) or time ran out."""
    from deploy_helpers import poll
    from google.cloud import pubsub_v1

    client = pubsub_v1.SubscriberClient()
    path = client.subscription_path(project, subscription)
    got: list[Any] = []

    def enough() -> bool:
        response = client.pull(subscription=path, max_messages=10, timeout=5)
        if response.received_messages:
            client.acknowledge(subscription=path, ack_ids=[m.ack_id for m in response.received_messages])
            got.extend(m.message for m in response.received_messages)
        return len(got) >= want

    poll(enough, timeout=timeout, what=f"{want} message(s) on {subscription}", interval=0.05)
    return got


def test_packaged_ingest_publishes_to_the_pubsub_emulator(pubsub_emulator: Any, tmp_path: Path) -> None:
    """The deployable ingest, with only its package, accepts a v1 request and publishes it."""
    _needs("ingest")
    import uuid

    from common.messaging.pubsub.admin import delete_subscription, delete_topic, ensure_subscription, ensure_topic

    project = pubsub_emulator.project
    topic = f"deploy-req-{uuid.uuid4().hex[:8]}"
    ensure_topic(project, topic)
    ensure_subscription(project, topic, f"{topic}-check")
    pkg = unpack(package_function("ingest", tmp_path / "build"), tmp_path / "unpacked")
    env = isolated_env({**BASE_ENV, "GCP_PROJECT": project, "REQUESTS_TOPIC": topic,
                        "PUBSUB_EMULATOR_HOST": pubsub_emulator.host})
    request = {"request_id": "r-deploy-1", "instances": [[i % 256 for i in range(784)]]}
    try:
        with serve_package(pkg, "ingest", env, tmp_path / "ingest.log") as url:
            status, body = http("POST", url, json.dumps(request).encode(), {"Content-Type": "application/json"})
            assert status == 202, body
            assert json.loads(body)["request_ids"] == ["r-deploy-1"]
            (message,) = _pull(project, f"{topic}-check", 1, timeout=30)
        published = json.loads(message.data)
        assert published["request_id"] == "r-deploy-1"
    finally:
        delete_subscription(project, f"{topic}-check")
        delete_topic(project, topic)


def push_body(data: dict[str, Any], message_id: str, subscription: str) -> bytes:
    """The body a Pub/Sub push subscription (the one Terraform creates for predict) POSTs."""
    return json.dumps({
        "message": {"data": base64.b64encode(json.dumps(data).encode()).decode(), "attributes": {},
                    "messageId": message_id, "publishTime": "2026-11-26T10:00:00.000Z"},
        "subscription": subscription,
    }).encode()


def _model_folder() -> Path:
    """The bundled model Terraform uploads; until it is committed, the predict tests' own tiny model."""
    bundled = REPO / "models" / "fashion-cnn"
    if (bundled / "manifest.json").exists():
        return bundled
    import sys

    sys.path.insert(0, str(REPO / "tests" / "predict"))
    try:
        from fm_tiny_model import tiny_model_dir
    except ImportError:
        pytest.skip("no model: models/fashion-cnn is not committed and tests/predict/fm_tiny_model.py is gone")
    finally:
        sys.path.remove(str(REPO / "tests" / "predict"))
    return Path(tiny_model_dir())


def _first_test_image() -> list[int]:
    import gzip

    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as fh:
        fh.read(16)  # IDX header
        return list(fh.read(784))


def test_packaged_predict_answers_a_push_delivery_as_terraform_deploys_it(
    pubsub_emulator: Any, gcs_emulator: Any, tmp_path: Path
) -> None:
    """Terraform's setup, locally: the package, the model under the bucket prefix Terraform uploads it
    to, the environment Terraform sets (variables at their defaults), and the push body the predict
    subscription sends. A good request yields a result; a poison one an error, acknowledged (2xx),
    so Pub/Sub neither retries it nor needs the dead-letter topic for it."""
    _needs("predict")
    import uuid

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from common.messaging.pubsub.admin import delete_subscription, delete_topic, ensure_subscription, ensure_topic

    tf = load_terraform()
    project = pubsub_emulator.project
    run = uuid.uuid4().hex[:8]
    bucket = f"deploy-models-{run}"
    topics = {role: f"deploy-{role}-{run}" for role in ("results", "errors")}
    for topic in topics.values():
        ensure_topic(project, topic)
        ensure_subscription(project, topic, f"{topic}-check")

    # Upload the model as Terraform's bundled_model objects do: every file under <bundled_prefix>/.
    model = _model_folder()
    client = storage.Client(project=project, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs_emulator.endpoint})
    gcs_bucket = client.create_bucket(bucket)
    prefix = tf.locals["bundled_prefix"]
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        gcs_bucket.blob(f"{prefix}/{path.relative_to(model).as_posix()}").upload_from_filename(str(path))
    manifest = json.loads((model / "manifest.json").read_text())

    env = terraform_env(tf, "predict", variables={"project": project}, known={
        "local.model_bucket": bucket,
        'google_pubsub_topic.topics["results"].name': topics["results"],
        'google_pubsub_topic.topics["errors"].name': topics["errors"],
    })
    assert env["MODEL_URI"] == f"gs://{bucket}/{prefix}"
    # Local-only: point the clients at the emulators (never set by Terraform).
    env.update({"PUBSUB_EMULATOR_HOST": pubsub_emulator.host, "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint,
                "MODEL_CACHE_DIR": str(tmp_path / "model-cache")})
    pkg = unpack(package_function("predict", tmp_path / "build"), tmp_path / "unpacked")
    subscription = f"projects/{project}/subscriptions/fashion-requests-predict"
    good = {"request_id": "r-deploy-push", "instances": [_first_test_image()]}
    try:
        with serve_package(pkg, "predict", isolated_env(env), tmp_path / "predict.log") as url:
            status, body = http("POST", url, push_body(good, "101", subscription),
                                {"Content-Type": "application/json"}, timeout=120)
            assert 200 <= status < 300, body
            (result,) = _pull(project, f"{topics['results']}-check", 1, timeout=60)
            status, body = http("POST", url, json.dumps({
                "message": {"data": base64.b64encode(b"{not json").decode(), "messageId": "102"},
                "subscription": subscription}).encode(), {"Content-Type": "application/json"})
            assert 200 <= status < 300, f"a poison message must be acknowledged, got {status}: {body!r}"
            (error,) = _pull(project, f"{topics['errors']}-check", 1, timeout=60)
        answer = json.loads(result.data)
        assert answer["request_id"] == "r-deploy-push"
        assert answer["model_version"] == manifest["version"]
        (prediction,) = answer["predictions"]
        assert prediction["label"] == manifest["class_names"][prediction["class_id"]]
        assert json.loads(error.data)["error"]["code"] == "invalid_json"
    finally:
        for topic in topics.values():
            delete_subscription(project, f"{topic}-check")
            delete_topic(project, topic)

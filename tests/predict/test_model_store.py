"""ModelStore: fetch from Cloud Storage (emulator) or a folder, verify, load once, fail clearly."""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fm_gcs import PrivateEmulator, client_for, upload_folder
from fm_support import make_settings

from common import model_store
from common.errors import ModelIntegrityError, StorageUnavailable
from common.model_store import ModelStore, get_store
from common.predictor import FMPredictor


def _prefix() -> str:
    return f"models/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def model_uri(tiny_model: Path, gcs_client: Any) -> str:
    return upload_folder(gcs_client, "model-artifacts", _prefix(), tiny_model)


def test_loads_from_cloud_storage_and_predicts(model_uri: str, gcs_client: Any, tmp_path: Path,
                                               tiny_model: Path,
                                               fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    store = ModelStore(model_uri, cache_dir=tmp_path, client=gcs_client)
    assert not store.loaded  # lazy: constructing a store fetches nothing
    predictor = FMPredictor(store, settings=make_settings())
    preds = predictor.predict(fashion_test[0][:200])
    local = FMPredictor(str(tiny_model), settings=make_settings()).predict(fashion_test[0][:200])
    assert preds == local
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    assert predictor.model_version == manifest["version"]
    cached = list(tmp_path.rglob("model.tflite"))
    assert len(cached) == 1 and manifest["version"] in str(cached[0])
    assert not list(tmp_path.rglob("*.png")), "only what serving needs is downloaded"


def test_configured_model_is_read_through_storage_emulator_host(
    tiny_model: Path, gcs_endpoint: str, gcs_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = upload_folder(gcs_client, "model-artifacts", _prefix(), tiny_model)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.setattr(model_store, "_client", None)  # the process client is built from the env
    settings = make_settings(model_uri=uri, model_cache_dir=str(tmp_path))
    store = get_store(settings)
    assert get_store(settings) is store, "one store per process and model"
    assert FMPredictor(settings=settings).predict(np.zeros((1, 28, 28)))[0]["label"]
    assert store.loads == 1


def test_cached_download_is_reused_by_a_new_process(model_uri: str, gcs_client: Any, tmp_path: Path) -> None:
    ModelStore(model_uri, cache_dir=tmp_path, client=gcs_client).get()
    cached = next(tmp_path.rglob("model.tflite"))
    stamp = cached.stat().st_mtime_ns, cached.stat().st_ino
    ModelStore(model_uri, cache_dir=tmp_path, client=gcs_client).get()  # as a new process would
    assert (cached.stat().st_mtime_ns, cached.stat().st_ino) == stamp
    # A cache file damaged on disk is downloaded again, not trusted.
    cached.write_bytes(b"garbage")
    assert ModelStore(model_uri, cache_dir=tmp_path, client=gcs_client).get().manifest.version
    assert cached.read_bytes() != b"garbage"


def test_checksum_mismatch_in_storage_is_refused(tiny_model: Path, gcs_client: Any, tmp_path: Path) -> None:
    uri = upload_folder(gcs_client, "model-artifacts", _prefix(), tiny_model)
    _, prefix = model_store.split_gcs_uri(uri)
    data = bytearray((tiny_model / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    gcs_client.bucket("model-artifacts").blob(f"{prefix}/model.tflite").upload_from_string(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256") as info:
        ModelStore(uri, cache_dir=tmp_path, client=gcs_client).get()
    assert info.value.code == "model_integrity"
    assert not list(tmp_path.rglob("model.tflite")), "a bad download never lands in the cache"


def test_checksum_mismatch_in_a_local_folder_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    with (folder / "model.tflite").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        ModelStore(str(folder)).get()


@pytest.mark.parametrize("damage", ["no manifest", "no model", "bad json", "not listed", "wrong classes"])
def test_missing_or_malformed_artifacts_are_integrity_errors(damage: str, tiny_model: Path, tmp_path: Path,
                                                             gcs_client: Any) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if damage == "no manifest":
        (folder / "manifest.json").unlink()
    elif damage == "no model":
        (folder / "model.tflite").unlink()
    elif damage == "bad json":
        (folder / "manifest.json").write_text("{not json")
    elif damage == "not listed":
        del manifest["files"]["model.tflite"]
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:
        manifest["class_names"] = manifest["class_names"][:9]
        (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelIntegrityError):
        ModelStore(str(folder)).get()
    uri = upload_folder(gcs_client, "model-artifacts", _prefix(), folder)
    with pytest.raises(ModelIntegrityError):
        ModelStore(uri, cache_dir=tmp_path / "cache", client=gcs_client).get()


def test_storage_down_at_cold_start_is_transient_and_recovers(tiny_model: Path, tmp_path: Path) -> None:
    emulator = PrivateEmulator().start()
    try:
        client = client_for(emulator.endpoint)
        uri = upload_folder(client, "model-artifacts", "fashion", tiny_model)
        emulator.stop()
        store = ModelStore(uri, cache_dir=tmp_path, client=client, timeout_s=2, retry_deadline_s=1)
        start = time.monotonic()
        with pytest.raises(StorageUnavailable) as info:
            store.get()
        assert time.monotonic() - start < 10, "a cold start against dead storage fails fast"
        assert info.value.code == "storage_unavailable"
        # Storage comes back (same port, re-populated): the same store loads on the next call.
        emulator.start()
        upload_folder(client, "model-artifacts", "fashion", tiny_model)
        assert store.get().manifest.version
        assert store.loads == 2
    finally:
        emulator.stop()


def test_eight_concurrent_first_calls_load_once(model_uri: str, gcs_client: Any, tmp_path: Path) -> None:
    store = ModelStore(model_uri, cache_dir=tmp_path, client=gcs_client)
    barrier = threading.Barrier(8)
    got: list[Any] = []

    def first_call() -> None:
        barrier.wait()
        got.append(store.get())

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 8 and all(m is got[0] for m in got)
    assert store.loads == 1


def test_litert_interpreter_is_safe_under_concurrent_batches(tiny_model: Path,
                                                             fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    predictor = FMPredictor(str(tiny_model), settings=make_settings())
    x = fashion_test[0][:64]
    sizes = [1, 3, 8, 17, 32, 64, 5, 2]
    expected = {n: predictor.predict(x[:n]) for n in sizes}
    errors: list[str] = []
    barrier = threading.Barrier(len(sizes))

    def worker(n: int) -> None:
        barrier.wait()
        for _ in range(20):
            if predictor.predict(x[:n]) != expected[n]:
                errors.append(f"batch of {n} changed under concurrency")

    threads = [threading.Thread(target=worker, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors


@pytest.mark.slow
def test_keras_runtime_agrees_with_litert(model_uri: str, gcs_client: Any, tmp_path: Path,
                                          fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    x = fashion_test[0][:256]
    lite = FMPredictor(ModelStore(model_uri, cache_dir=tmp_path, client=gcs_client), settings=make_settings())
    keras = FMPredictor(ModelStore(model_uri, runtime="keras", cache_dir=tmp_path, client=gcs_client),
                        settings=make_settings(model_runtime="keras"))
    assert keras.load().runtime == "keras"
    a, b = lite.predict(x, top_k=10), keras.predict(x, top_k=10)
    assert [p["class_id"] for p in a] == [p["class_id"] for p in b]
    assert max(abs(p["score"] - q["score"]) for p, q in zip(a, b, strict=True)) < 1e-3

"""Find, fetch, verify and load the served model once per process.

A model URI is a local folder or a ``gs://bucket/prefix`` holding the trainer's artifacts
(``manifest.json`` plus ``model.tflite`` / ``model.keras``; see ``models/README.md``). Cold starts
are what serverless users feel, so everything here is lazy: nothing is imported, downloaded or
loaded until the first prediction, then the loaded model is kept for every later invocation of the
instance (:func:`get_store` shares stores per URI and runtime).

What is fetched: ``manifest.json`` and the one model file the runtime needs (``model.tflite`` for
LiteRT, the default; ``model.keras`` for ``MODEL_RUNTIME=keras``). That file's SHA-256 must match
the manifest before it is loaded; a ``gs://`` model is downloaded into ``model_cache_dir`` once and
a later process reuses the cached copy when its checksum still matches. The other files of the
folder (metrics, plots) are not needed to serve and are not downloaded.

Errors: storage that does not answer (connection refused, timeouts, 5xx, 429, credentials that
cannot be refreshed, 403 while IAM grants propagate) is :class:`~common.errors.StorageUnavailable`,
transient, so the message is delivered again. A missing manifest or model file, a malformed
manifest, a checksum mismatch or a model whose shape disagrees with its manifest is
:class:`~common.errors.ModelIntegrityError`. Failures are not remembered: the next call tries again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ForbiddenSource, InvalidImage, ModelIntegrityError, PayloadTooLarge, StorageUnavailable
from common.settings import Settings

MANIFEST = "manifest.json"
MODEL_FILES = {"litert": "model.tflite", "keras": "model.keras"}
_MANIFEST_MAX_BYTES = 1024 * 1024

# Bounded waits, so a cold start against storage that is down fails in seconds, not in the client
# library's default two minutes of retries; the caller (Pub/Sub, the Kafka loop) retries later.
STORAGE_TIMEOUT_S = 20.0
STORAGE_RETRY_DEADLINE_S = 10.0


# ---------------------------------------------------------------------------------------------
# Cloud Storage access, shared with the predictor's gs:// image inputs.

_client_lock = threading.Lock()
_client: Any = None


def storage_client() -> Any:
    """The process's one ``google.cloud.storage.Client`` (created on first use).

    The library itself honours ``STORAGE_EMULATOR_HOST`` (tests, local runs): it then talks to the
    emulator with anonymous credentials.
    """
    global _client
    with _client_lock:
        if _client is None:
            try:
                from google.cloud import storage  # imported lazily: 0.3 s of cold start

                _client = storage.Client()
            except Exception as exc:  # credentials or project cannot be found
                raise StorageUnavailable(f"cannot create a Cloud Storage client: {exc}") from exc
        return _client


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, name.strip("/")


def _is_transient(exc: BaseException) -> bool:
    """Storage faults worth retrying: network, timeouts, 5xx, 429, credentials, permission races."""
    from google.api_core import exceptions as gexc

    try:
        import requests

        network: tuple[type[BaseException], ...] = (requests.ConnectionError, requests.Timeout)
    except ImportError:  # pragma: no cover - requests ships with google-cloud-storage
        network = ()
    try:
        from google.auth import exceptions as auth_exc

        auth: tuple[type[BaseException], ...] = (auth_exc.TransportError, auth_exc.RefreshError,
                                                 auth_exc.DefaultCredentialsError)
    except ImportError:  # pragma: no cover
        auth = ()
    transient = (gexc.ServerError, gexc.TooManyRequests, gexc.RetryError, gexc.Forbidden,
                 gexc.Unauthorized, ConnectionError, TimeoutError, *network, *auth)
    return isinstance(exc, transient)


def _storage_retry(deadline_s: float) -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(deadline_s)


def read_gcs_object(
    uri: str,
    *,
    max_bytes: int,
    timeout_s: float = STORAGE_TIMEOUT_S,
    retry_deadline_s: float = STORAGE_RETRY_DEADLINE_S,
    client: Any = None,
) -> bytes:
    """Read at most ``max_bytes`` of a Cloud Storage object (an image of a request).

    A ranged read fetches one byte more than allowed, so an oversized object is refused without
    downloading it. Missing objects are :class:`InvalidImage` (``image_not_found``); objects the
    service may not read are :class:`ForbiddenSource`; an unreachable service is
    :class:`StorageUnavailable`.
    """
    from google.api_core import exceptions as gexc

    bucket_name, name = split_gcs_uri(uri)
    if not name:
        raise InvalidImage(f"{uri} names a bucket, not an object")
    try:
        blob = (client or storage_client()).bucket(bucket_name).blob(name)
        data = blob.download_as_bytes(start=0, end=max_bytes, timeout=timeout_s,
                                      retry=_storage_retry(retry_deadline_s))
    except gexc.NotFound as exc:
        raise InvalidImage(f"{uri} does not exist", code="image_not_found") from exc
    except gexc.Forbidden as exc:
        raise ForbiddenSource(f"the service may not read {uri}") from exc
    except gexc.RequestRangeNotSatisfiable as exc:  # an empty object
        raise InvalidImage(f"{uri} is empty") from exc
    except Exception as exc:
        if _is_transient(exc):
            raise StorageUnavailable(f"Cloud Storage did not answer for {uri}: {exc}") from exc
        raise
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{uri} is larger than the {max_bytes}-byte image limit")
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# The manifest.


@dataclass(frozen=True)
class ModelManifest:
    """What the predict side needs from ``manifest.json`` (format version 1)."""

    model_name: str
    version: str
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    scale: float
    files: dict[str, dict[str, Any]]
    metrics: dict[str, Any]

    @classmethod
    def from_bytes(cls, raw: bytes, source: str) -> ModelManifest:
        """Parse and check a manifest; anything malformed is a ModelIntegrityError."""
        try:
            doc = json.loads(raw)
            if doc.get("format_version") != 1:
                raise ValueError(f"unsupported format_version {doc.get('format_version')!r}")
            pre = doc.get("preprocessing", {})
            if pre.get("polarity", "light_on_dark") != "light_on_dark":
                raise ValueError(f"unsupported polarity {pre.get('polarity')!r}")
            manifest = cls(
                model_name=str(doc["model_name"]),
                version=str(doc["version"]),
                class_names=tuple(str(c) for c in doc["class_names"]),
                input_shape=tuple(int(d) for d in doc["input_shape"]),
                scale=float(pre.get("scale", 255.0)),
                files={str(k): dict(v) for k, v in doc["files"].items()},
                metrics=dict(doc.get("metrics", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelIntegrityError(f"{source}/{MANIFEST} is not a valid manifest: {exc}") from exc
        if len(manifest.class_names) < 2 or manifest.scale <= 0:
            raise ModelIntegrityError(f"{source}/{MANIFEST} is not a valid manifest: bad classes or scale")
        return manifest

    def expected_sha256(self, filename: str, source: str) -> str:
        entry = self.files.get(filename)
        if not entry or not isinstance(entry.get("sha256"), str):
            raise ModelIntegrityError(f"{source}/{MANIFEST} lists no sha256 for {filename}")
        return str(entry["sha256"]).lower()


# ---------------------------------------------------------------------------------------------
# Loaded models: one small interface over LiteRT and Keras.


class LoadedModel(ABC):
    """A model ready to answer: float32 ``n x H x W x C`` in [0, 1] -> ``n x classes`` probabilities."""

    runtime: str

    def __init__(self, manifest: ModelManifest) -> None:
        self.manifest = manifest

    @abstractmethod
    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a whole batch, in one model call."""


class LiteRTModel(LoadedModel):
    """The TFLite flatbuffer under the LiteRT interpreter: 0.06 s to import and load.

    An interpreter is not thread-safe (functions-framework serves 8 threads), so calls are
    serialised by a lock; one 256-image call takes about 35 ms, so this costs little.
    """

    runtime = "litert"

    def __init__(self, manifest: ModelManifest, content: bytes) -> None:
        super().__init__(manifest)
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_content=content)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelIntegrityError(f"model.tflite does not load: {exc}") from exc
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        self._lock = threading.Lock()
        if tuple(int(d) for d in self._input["shape"][1:]) != manifest.input_shape:
            raise ModelIntegrityError(
                f"model.tflite input {list(self._input['shape'][1:])} != manifest {list(manifest.input_shape)}"
            )
        if int(self._output["shape"][-1]) != len(manifest.class_names):
            raise ModelIntegrityError("model.tflite output size does not match the manifest's class names")

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            if batch.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
                self._interpreter.allocate_tensors()
                self._batch = batch.shape[0]
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            return np.array(self._interpreter.get_tensor(self._output["index"]))


class KerasModel(LoadedModel):
    """The Keras model under TensorFlow (``MODEL_RUNTIME=keras``): 2 s to import, then fast.

    Calls go through one ``tf.function`` with a fixed signature (traced once, thread-safe), never
    ``model.predict``, which costs about 70 ms of set-up per call.
    """

    runtime = "keras"

    def __init__(self, manifest: ModelManifest, path: Path) -> None:
        super().__init__(manifest)
        import tensorflow as tf  # only this runtime pays for TensorFlow

        try:
            model = tf.keras.models.load_model(path, compile=False)
        except Exception as exc:
            raise ModelIntegrityError(f"model.keras does not load: {exc}") from exc
        spec = tf.TensorSpec([None, *manifest.input_shape], tf.float32)
        self._fn: Callable[[Any], Any] = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        out = self._fn(np.zeros((1, *manifest.input_shape), np.float32))
        if int(out.shape[-1]) != len(manifest.class_names):
            raise ModelIntegrityError("model.keras output size does not match the manifest's class names")

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._fn(np.ascontiguousarray(batch, dtype=np.float32)))


# ---------------------------------------------------------------------------------------------
# The store.


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks; what manifests record and the store verifies."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelStore:
    """Resolves one model URI and loads it once, on first use, for every thread of the process."""

    def __init__(
        self,
        uri: str,
        *,
        runtime: str = "litert",
        cache_dir: str | os.PathLike[str] = "/tmp/fashion-model-cache",
        timeout_s: float = STORAGE_TIMEOUT_S,
        retry_deadline_s: float = STORAGE_RETRY_DEADLINE_S,
        client: Any = None,
    ) -> None:
        """``client``: a ``google.cloud.storage.Client`` to use instead of the process's shared one."""
        if runtime not in MODEL_FILES:
            raise ValueError(f"runtime must be one of {sorted(MODEL_FILES)}, got {runtime!r}")
        self.uri = uri.rstrip("/") if uri.startswith("gs://") else str(Path(uri).expanduser())
        self.runtime = runtime
        self.cache_dir = Path(cache_dir)
        self.timeout_s = timeout_s
        self.retry_deadline_s = retry_deadline_s
        self._client = client
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self.load_seconds: float | None = None
        self.loads = 0  # how many times a load ran (tests check it stays 1)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelStore:
        return cls(settings.model_uri, runtime=settings.model_runtime, cache_dir=settings.model_cache_dir)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> LoadedModel:
        """The loaded model; the first call (from any thread) fetches, verifies and loads it."""
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                start = time.perf_counter()
                self.loads += 1
                self._model = self._load()
                self.load_seconds = time.perf_counter() - start
            return self._model

    @property
    def manifest(self) -> ModelManifest:
        return self.get().manifest

    def _load(self) -> LoadedModel:
        filename = MODEL_FILES[self.runtime]
        if self.uri.startswith("gs://"):
            manifest, path = self._fetch_gcs(filename)
            content = path.read_bytes()
            if sha256_bytes(content) != manifest.expected_sha256(filename, self.uri):  # changed on disk
                raise ModelIntegrityError(f"cached {filename} of {self.uri} does not match its manifest")
        else:
            manifest, path, content = self._open_local(filename)
        if self.runtime == "litert":
            return LiteRTModel(manifest, content)
        return KerasModel(manifest, path)

    def _open_local(self, filename: str) -> tuple[ModelManifest, Path, bytes]:
        folder = Path(self.uri)
        try:
            manifest = ModelManifest.from_bytes((folder / MANIFEST).read_bytes(), self.uri)
            content = (folder / filename).read_bytes()
        except FileNotFoundError as exc:
            raise ModelIntegrityError(f"{exc.filename} is missing") from exc
        except OSError as exc:
            raise ModelIntegrityError(f"cannot read the model in {folder}: {exc}") from exc
        expected = manifest.expected_sha256(filename, self.uri)
        if sha256_bytes(content) != expected:
            raise ModelIntegrityError(f"{folder / filename} does not match the sha256 in its manifest")
        return manifest, folder / filename, content

    def _fetch_gcs(self, filename: str) -> tuple[ModelManifest, Path]:
        """Download manifest and model file (unless cached with the right checksum) and verify."""
        from google.api_core import exceptions as gexc

        bucket_name, prefix = split_gcs_uri(self.uri)
        retry = _storage_retry(self.retry_deadline_s)
        current = MANIFEST
        try:
            bucket = (self._client or storage_client()).bucket(bucket_name)
            raw = bucket.blob(_join(prefix, MANIFEST)).download_as_bytes(
                start=0, end=_MANIFEST_MAX_BYTES, timeout=self.timeout_s, retry=retry)
            manifest = ModelManifest.from_bytes(raw, self.uri)
            expected = manifest.expected_sha256(filename, self.uri)
            key = sha256_bytes(self.uri.encode())[:16]
            target = self.cache_dir / key / manifest.version / filename
            if target.exists() and sha256_file(target) == expected:
                return manifest, target
            current = filename
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                bucket.blob(_join(prefix, filename)).download_to_filename(
                    str(tmp), timeout=self.timeout_s, retry=retry)
                if sha256_file(tmp) != expected:
                    raise ModelIntegrityError(
                        f"{self.uri}/{filename} does not match the sha256 in its manifest")
                os.replace(tmp, target)  # atomic: other processes see all of it or nothing
            finally:
                tmp.unlink(missing_ok=True)
            return manifest, target
        except gexc.NotFound as exc:
            raise ModelIntegrityError(f"{self.uri}/{current} is missing") from exc
        except (ModelIntegrityError, StorageUnavailable):
            raise
        except Exception as exc:
            if _is_transient(exc):
                raise StorageUnavailable(f"Cloud Storage did not answer for {self.uri}: {exc}") from exc
            raise


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


_stores: dict[tuple[str, str, str], ModelStore] = {}
_stores_lock = threading.Lock()


def get_store(settings: Settings) -> ModelStore:
    """The process-wide store for the configured model, so every invocation reuses one load."""
    key = (settings.model_uri, settings.model_runtime, settings.model_cache_dir)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = ModelStore.from_settings(settings)
        return store

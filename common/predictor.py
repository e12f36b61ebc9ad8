"""FMPredictor: every accepted kind of image in, one batched model call, labelled scores out.

Accepted inputs (``predict``):

* a NumPy array ``n x 28 x 28 x 1``, ``n x 28 x 28`` or ``n x 784``, or one image ``28 x 28`` or ``784``;
* a list of instances, each one of: a nested list / array ``28 x 28``, ``28 x 28 x 1`` or flat
  ``784``; encoded PNG/JPEG ``bytes``; a ``gs://bucket/object`` URI (only buckets on
  ``ALLOWED_BUCKETS``); the JSON objects ``{"b64": ...}`` / ``{"gcs_uri": ...}``; or the typed
  instances of :class:`common.contract.PredictRequest` (arrays, ``EncodedImage``, ``GcsImage``).

Local file paths are refused here (:class:`~common.errors.ForbiddenSource`): a message must never
make the service read a local file. The command line uses :meth:`FMPredictor.predict_files`.

Pixel arrays are taken as model input as they are (light garment on black, as in Fashion-MNIST).
Their scale is decided per instance: a ``uint8`` array is 0-255; otherwise an instance with any
value above 1 is 0-255 and one whose values all lie within 0-1 is 0-1 (multiplied by 255). So a
0-255 image whose brightest pixel is 1 reads as 0-1; no real garment looks like that. NaN, inf,
negative values and values above 255 are refused. Encoded images (bytes, gs://, files) go through
:func:`common.imaging.prepare_image` (polarity, crop, framing) first.

Errors name the failing instance: the raised error's ``index`` is its position in the request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import EncodedImage, GcsImage, parse_gcs_uri
from common.errors import (
    ForbiddenSource,
    InvalidImage,
    InvalidRequest,
    PayloadTooLarge,
    PipelineError,
)
from common.imaging import decode_image, load_image_file, prepare_image
from common.model_store import LoadedModel, ModelStore, get_store, read_gcs_object
from common.settings import Settings

SIDE = 28
PIXELS = SIDE * SIDE
SCORE_DIGITS = 6  # scores are rounded so a redelivered request publishes byte-identical results

Prediction = dict[str, Any]


def _at(index: int, exc: PipelineError) -> PipelineError:
    """The same error, re-raised with the instance index in its field and its message."""
    return type(exc)(f"instance {index}: {exc.message}", code=exc.code, index=index, request_id=exc.request_id)


class FMPredictor:
    """Fashion-MNIST predictor over a lazily loaded model (LiteRT by default, Keras optional)."""

    def __init__(
        self,
        model: str | ModelStore | None = None,
        *,
        settings: Settings | None = None,
        storage_client: Any = None,
    ) -> None:
        """``model``: a model URI (local folder or ``gs://``), a :class:`ModelStore`, or None for
        the configured one (``MODEL_URI``, shared across the process via ``get_store``)."""
        self.settings = settings or Settings.from_env()
        if isinstance(model, ModelStore):
            self.store = model
        elif model is None:
            self.store = get_store(self.settings)
        else:
            self.store = ModelStore(model, runtime=self.settings.model_runtime,
                                    cache_dir=self.settings.model_cache_dir, client=storage_client)
        self._storage_client = storage_client

    # -- model facts ---------------------------------------------------------------------------

    def load(self) -> LoadedModel:
        """Fetch and load the model now (warm-up); later calls are free."""
        return self.store.get()

    @property
    def model_name(self) -> str:
        return self.load().manifest.model_name

    @property
    def model_version(self) -> str:
        return self.load().manifest.version

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.load().manifest.class_names

    # -- prediction ----------------------------------------------------------------------------

    def predict(self, inputs: Any, top_k: int = 1) -> list[Prediction]:
        """Predict every image of ``inputs`` (see the module docstring) in one model call."""
        self._check_top_k(top_k)
        return self.predict_pixels(self.to_pixels(inputs), top_k)

    def predict_files(self, paths: Sequence[str | Path], top_k: int = 1) -> list[Prediction]:
        """Command line only: read local PNG/JPEG files, prepare them and predict in one call."""
        self._check_top_k(top_k)
        images = []
        for i, path in enumerate(paths):
            try:
                images.append(load_image_file(path))
            except PipelineError as exc:
                raise _at(i, exc) from exc
        return self.predict_pixels(np.stack(images) if images else np.zeros((0, SIDE, SIDE), np.uint8), top_k)

    def predict_pixels(self, pixels: np.ndarray, top_k: int = 1) -> list[Prediction]:
        """Predict a ready ``n x 28 x 28`` uint8 batch (light on black) in one model call."""
        self._check_top_k(top_k)
        if pixels.shape[0] == 0:
            return []
        model = self.load()
        batch = pixels.astype(np.float32).reshape(-1, *model.manifest.input_shape) / model.manifest.scale
        probs = model.predict_proba(batch)
        return self._format(probs, top_k, model.manifest.class_names)

    def _check_top_k(self, top_k: Any) -> None:
        limit = self.settings.max_top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= limit:
            raise InvalidRequest(f"top_k must be an integer from 1 to {limit}, got {top_k!r}")

    @staticmethod
    def _format(probs: np.ndarray, top_k: int, names: tuple[str, ...]) -> list[Prediction]:
        k = min(top_k, len(names))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for row, idx in zip(probs, order, strict=True):
            ranked = [{"label": names[c], "class_id": int(c), "score": round(float(row[c]), SCORE_DIGITS)}
                      for c in idx]
            out.append({**ranked[0], "top_k": ranked})
        return out

    # -- input conversion ----------------------------------------------------------------------

    def to_pixels(self, inputs: Any) -> np.ndarray:
        """Turn any accepted input into an ``n x 28 x 28`` uint8 batch, naming failing instances."""
        if isinstance(inputs, np.ndarray):
            pixels = self._array_batch(inputs)
        elif isinstance(inputs, (list, tuple)):
            pixels = self._instances(list(inputs))
        elif isinstance(inputs, (bytes, bytearray, str, dict)):
            pixels = self._instances([inputs])
        else:
            raise InvalidRequest(f"unsupported input type {type(inputs).__name__}")
        limit = self.settings.max_images_per_request
        if pixels.shape[0] > limit:
            raise PayloadTooLarge(f"{pixels.shape[0]} images in one request, the limit is {limit}")
        return pixels

    def scale_pixels(self, images: np.ndarray) -> np.ndarray:
        """``n x 28 x 28`` raw pixel values (0-255, or 0-1 per image) as uint8, checked in one pass.

        For callers that gather the images of many requests (the predict handler); no per-request
        image limit applies here.
        """
        if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
            raise InvalidRequest(f"expected n x 28 x 28 pixels, got {images.shape}", code="invalid_shape")
        return self._scaled(images, range(len(images)))

    def _array_batch(self, arr: np.ndarray) -> np.ndarray:
        shape = arr.shape
        if shape in ((SIDE, SIDE), (SIDE, SIDE, 1), (PIXELS,)):
            arr = arr.reshape(1, SIDE, SIDE)
        elif shape[1:] in ((SIDE, SIDE, 1), (SIDE, SIDE), (PIXELS,)):
            arr = arr.reshape(-1, SIDE, SIDE)
        else:
            raise InvalidRequest(
                f"array of shape {shape}: expected n x 28 x 28 x 1, n x 28 x 28, n x 784, 28 x 28 or 784",
                code="invalid_shape")
        if arr.shape[0] > self.settings.max_images_per_request:
            raise PayloadTooLarge(
                f"{arr.shape[0]} images in one request, the limit is {self.settings.max_images_per_request}")
        return self._scaled(arr, range(len(arr))) if len(arr) else np.zeros((0, SIDE, SIDE), np.uint8)

    def _instances(self, items: list[Any]) -> np.ndarray:
        if len(items) > self.settings.max_images_per_request:
            raise PayloadTooLarge(
                f"{len(items)} images in one request, the limit is {self.settings.max_images_per_request}")
        out: list[np.ndarray | None] = [None] * len(items)
        remote: list[tuple[int, str]] = []
        raw: dict[int, np.ndarray] = {}  # pixel arrays, checked and scaled together below
        for i, item in enumerate(items):
            if isinstance(item, dict):
                item = self._unwrap(item, i)
            elif isinstance(item, EncodedImage):
                item = item.data
            elif isinstance(item, GcsImage):
                item = item.uri
            if isinstance(item, str):
                if not item.startswith("gs://"):
                    raise ForbiddenSource(f"instance {i}: only gs:// URIs may name an image; local paths are "
                                          "for the command line", index=i)
                self._check_bucket(item, i)
                remote.append((i, item))
            elif isinstance(item, (bytes, bytearray, memoryview)):
                out[i] = self._encoded(bytes(item), i)
            else:
                raw[i] = self._pixel_instance(item, i)
        if raw:
            for i, img in zip(raw, self._scaled(np.stack(list(raw.values())), list(raw)), strict=True):
                out[i] = img
        if remote:
            for i, img in self._fetch_all(remote):
                out[i] = img
        return np.stack([o for o in out if o is not None]) if items else np.zeros((0, SIDE, SIDE), np.uint8)

    def _unwrap(self, item: dict[str, Any], i: int) -> Any:
        """The contract's ``{"b64": ...}`` and ``{"gcs_uri": ...}`` objects."""
        if set(item) == {"b64"} and isinstance(item["b64"], str):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidImage(f"instance {i}: b64 is not valid base64", code="invalid_base64",
                                   index=i) from exc
        if set(item) == {"gcs_uri"} and isinstance(item["gcs_uri"], str):
            if not item["gcs_uri"].startswith("gs://"):
                raise ForbiddenSource(f"instance {i}: gcs_uri must start with gs://", index=i)
            return item["gcs_uri"]
        raise InvalidImage(f"instance {i}: an object instance must be {{'b64': ...}} or {{'gcs_uri': ...}}",
                           index=i)

    def _check_bucket(self, uri: str, i: int) -> None:
        """The contract's allow-list and object-name checks, for URIs that did not come through it."""
        parse_gcs_uri(uri, self.settings, index=i)

    def _fetch_all(self, remote: list[tuple[int, str]]) -> list[tuple[int, np.ndarray]]:
        """Download gs:// images in parallel (each is a network round trip), then decode them."""

        def fetch(job: tuple[int, str]) -> tuple[int, np.ndarray]:
            i, uri = job
            try:
                data = read_gcs_object(uri, max_bytes=self.settings.max_image_bytes, client=self._storage_client)
            except PipelineError as exc:
                raise _at(i, exc) from exc
            return i, self._encoded(data, i)

        if len(remote) == 1:
            return [fetch(remote[0])]
        with ThreadPoolExecutor(max_workers=min(8, len(remote))) as pool:
            return list(pool.map(fetch, remote))

    def _encoded(self, data: bytes, i: int) -> np.ndarray:
        try:
            gray = decode_image(data, max_bytes=self.settings.max_image_bytes,
                                max_side=self.settings.max_image_side, min_side=8 * SIDE)
            return prepare_image(gray, (SIDE, SIDE))
        except PipelineError as exc:
            raise _at(i, exc) from exc

    def _pixel_instance(self, item: Any, i: int) -> np.ndarray:
        """One image's raw pixels as a 28 x 28 array (values are checked by :meth:`_scaled`)."""
        try:
            arr = np.asarray(item)
        except (ValueError, TypeError) as exc:  # ragged nested lists
            raise InvalidImage(f"instance {i}: not a rectangular array of numbers", code="invalid_shape",
                               index=i) from exc
        if arr.shape not in ((PIXELS,), (SIDE, SIDE), (SIDE, SIDE, 1)):
            raise InvalidImage(f"instance {i}: shape {arr.shape}, expected 28 x 28, 28 x 28 x 1 or 784",
                               code="invalid_shape", index=i)
        _check_numbers(arr.dtype, i)
        return arr.reshape(SIDE, SIDE)

    @staticmethod
    def _scaled(images: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        """Check values and bring them to uint8 0-255 (see the module docstring for the scale rule).

        Works on a stack of ``n x 28 x 28`` images at once (one numpy pass, not one per image: per
        image it cost the Kafka adapter 15% of its time); ``indices`` name the images in errors.
        """
        if images.dtype == np.uint8:
            return images
        _check_numbers(images.dtype, indices[0])
        values = images.astype(np.float64)

        def first(bad: np.ndarray) -> int | None:
            """Position of the first image flagged in ``bad``, or None."""
            return int(np.argmax(bad)) if bad.any() else None

        if (k := first(~np.isfinite(values).all(axis=(1, 2), keepdims=True).ravel())) is not None:
            raise InvalidImage(f"instance {indices[k]}: pixel values must be finite (found NaN or inf)",
                               code="invalid_values", index=indices[k])
        low, high = values.min(axis=(1, 2)), values.max(axis=(1, 2))
        if (k := first(low < 0)) is not None:
            raise InvalidImage(f"instance {indices[k]}: pixel values must not be negative (found {low[k]:g})",
                               code="invalid_values", index=indices[k])
        if (k := first(high > 255)) is not None:
            raise InvalidImage(f"instance {indices[k]}: pixel values must be at most 255 (found {high[k]:g})",
                               code="invalid_values", index=indices[k])
        scale = np.where(high <= 1.0, 255.0, 1.0)[:, None, None]
        return np.rint(values * scale).astype(np.uint8)


def _check_numbers(dtype: np.dtype[Any], i: int) -> None:
    """Pixels are integers or floats; booleans, strings and objects are refused."""
    if dtype.kind == "b" or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InvalidImage(f"instance {i}: pixel values must be numbers, got {dtype}", code="invalid_values", index=i)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m common.predictor [--model-uri URI] [--top-k K] IMAGE...``.

    Prints one JSON line per image (the file name plus its prediction). Local files are fine here:
    this is the user's own machine, not a message.
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m common.predictor",
                                     description="Classify PNG/JPEG garment photos with the Fashion-MNIST CNN.")
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    parser.add_argument("--model-uri", help="model folder or gs:// prefix (default: MODEL_URI, else the bundled model)")
    parser.add_argument("--top-k", type=int, default=1, help="how many classes to list per image")
    parser.add_argument("--runtime", choices=("litert", "keras"), help="MODEL_RUNTIME")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(model_uri=args.model_uri, model_runtime=args.runtime)
        predictor = FMPredictor(settings.model_uri, settings=settings)
        predictions = predictor.predict_files(args.images, top_k=args.top_k)
    except PipelineError as exc:
        print(json.dumps({"error": exc.to_dict()}))
        return 1
    for path, prediction in zip(args.images, predictions, strict=True):
        print(json.dumps({"image": str(path), **prediction}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

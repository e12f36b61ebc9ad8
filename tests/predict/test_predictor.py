"""FMPredictor on real Fashion-MNIST test images, in every accepted input form."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fm_support import ALLOWED_BUCKET, make_settings
from fm_synth import encode, photo_of

from common.contract import parse_request
from common.errors import ForbiddenSource, InvalidImage, InvalidRequest, PayloadTooLarge, PipelineError
from common.predictor import FMPredictor

N = 500  # test images per accuracy check: enough to tell 83% from 75%


def _accuracy(preds: list[dict[str, Any]], labels: np.ndarray) -> float:
    return float(np.mean([p["class_id"] == int(y) for p, y in zip(preds, labels, strict=True)]))


def _ids(preds: list[dict[str, Any]]) -> list[int]:
    return [p["class_id"] for p in preds]


def test_arrays_in_every_layout_give_the_recorded_accuracy(
    predictor: FMPredictor, fashion_test: tuple[np.ndarray, np.ndarray], tiny_model: Path
) -> None:
    x, y = fashion_test[0][:N], fashion_test[1][:N]
    recorded = json.loads((tiny_model / "manifest.json").read_text())["metrics"]["test_accuracy"]
    base = predictor.predict(x)  # n x 28 x 28 uint8
    assert abs(_accuracy(base, y) - recorded) < 0.04
    assert _ids(predictor.predict(x[..., None].astype(np.float32) / 255.0)) == _ids(base)  # n x 28 x 28 x 1, 0-1
    assert _ids(predictor.predict(x.reshape(N, 784).tolist())) == _ids(base)  # n x 784 JSON-style lists
    assert _ids(predictor.predict([img.tolist() for img in x[:20]])) == _ids(base[:20])  # 28 x 28 lists
    assert _ids(predictor.predict(x[0])) == _ids(base[:1])  # one 28 x 28 image


def test_results_carry_labels_scores_and_sorted_top_k(predictor: FMPredictor,
                                                      fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    preds = predictor.predict(fashion_test[0][:5], top_k=3)
    for p in preds:
        assert set(p) == {"label", "class_id", "score", "top_k"}
        assert p["label"] == predictor.class_names[p["class_id"]]
        assert len(p["top_k"]) == 3
        assert p["top_k"][0] == {"label": p["label"], "class_id": p["class_id"], "score": p["score"]}
        scores = [t["score"] for t in p["top_k"]]
        assert scores == sorted(scores, reverse=True)
    full = predictor.predict(fashion_test[0][:1], top_k=10)[0]["top_k"]
    assert sorted(t["class_id"] for t in full) == list(range(10))
    assert abs(sum(t["score"] for t in full) - 1.0) < 1e-4
    json.dumps(preds)  # publishable as is


@pytest.mark.parametrize("top_k", [0, 11, -1, "3", True, 2.0])
def test_bad_top_k_is_an_invalid_request(predictor: FMPredictor, top_k: Any) -> None:
    with pytest.raises(InvalidRequest, match="top_k"):
        predictor.predict(np.zeros((1, 28, 28), np.uint8), top_k=top_k)


def test_a_batch_is_one_model_call(predictor: FMPredictor, fashion_test: tuple[np.ndarray, np.ndarray],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = predictor.load()
    calls: list[int] = []
    real = model.predict_proba

    def counting(batch: np.ndarray) -> np.ndarray:  # a spy on the real model, not a stand-in
        calls.append(batch.shape[0])
        return real(batch)

    monkeypatch.setattr(model, "predict_proba", counting)
    x = fashion_test[0][:40]
    instances: list[Any] = [x[i].tolist() for i in range(20)] + [encode(x[i], ".png") for i in range(20, 40)]
    predictor.predict(instances)
    assert calls == [40]


@pytest.fixture(scope="module")
def original_accuracy(predictor: FMPredictor, fashion_test: tuple[np.ndarray, np.ndarray]) -> float:
    return _accuracy(predictor.predict(fashion_test[0][:N]), fashion_test[1][:N])


def test_photos_on_white_are_classified_almost_as_well_as_the_originals(
    predictor: FMPredictor, fashion_test: tuple[np.ndarray, np.ndarray], original_accuracy: float
) -> None:
    rng = np.random.default_rng(11)
    x, y = fashion_test[0][:N], fashion_test[1][:N]
    on_white = [{"b64": base64.b64encode(encode(photo_of(img, rng))).decode()} for img in x]
    assert _accuracy(predictor.predict(on_white), y) > original_accuracy - 0.05


@pytest.mark.parametrize("scene,falloff", [("light_on_black", 0.0), ("pale_on_white", 0.0), ("dark_on_grey", 0.0),
                                           ("light_on_grey", 0.0), ("dark_on_white", 0.2)])
def test_photos_in_other_scenes_too(predictor: FMPredictor, fashion_test: tuple[np.ndarray, np.ndarray],
                                    original_accuracy: float, scene: str, falloff: float) -> None:
    rng = np.random.default_rng(12)
    x, y = fashion_test[0][:200], fashion_test[1][:200]
    photos = [encode(photo_of(img, rng, scene=scene, light_falloff=falloff)) for img in x]
    assert _accuracy(predictor.predict(photos), y) > original_accuracy - 0.07


def test_mixed_instances_in_one_request(predictor: FMPredictor, fashion_test: tuple[np.ndarray, np.ndarray],
                                        gcs_client: Any) -> None:
    x = fashion_test[0]
    bucket = gcs_client.bucket(ALLOWED_BUCKET)
    if not bucket.exists():
        gcs_client.create_bucket(ALLOWED_BUCKET)
    bucket.blob("mixed/boot.jpg").upload_from_string(encode(photo_of(x[0], np.random.default_rng(2))))
    instances = [
        x[1].tolist(),                                   # 28 x 28
        x[2].reshape(784).tolist(),                      # flat 784
        x[3][..., None].tolist(),                        # 28 x 28 x 1
        encode(x[4], ".png"),                            # raw bytes
        {"b64": base64.b64encode(encode(x[5], ".png")).decode()},
        {"gcs_uri": f"gs://{ALLOWED_BUCKET}/mixed/boot.jpg"},
        f"gs://{ALLOWED_BUCKET}/mixed/boot.jpg",
    ]
    preds = predictor.predict(instances)
    direct = _ids(predictor.predict(x[:6]))
    assert _ids(preds)[:6] == [*direct[1:6], preds[5]["class_id"]]
    assert preds[5]["class_id"] == preds[6]["class_id"] == direct[0]


def test_typed_instances_from_the_contract(predictor: FMPredictor, gcs_client: Any,
                                           fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    x = fashion_test[0]
    bucket = gcs_client.bucket(ALLOWED_BUCKET)
    if not bucket.exists():
        gcs_client.create_bucket(ALLOWED_BUCKET)
    bucket.blob("typed/shirt.png").upload_from_string(encode(x[7], ".png"))
    body = json.dumps({"request_id": "typed-1", "top_k": 2, "instances": [
        x[6].tolist(), {"b64": base64.b64encode(encode(x[8], ".png")).decode()},
        {"gcs_uri": f"gs://{ALLOWED_BUCKET}/typed/shirt.png"}]}).encode()
    request = parse_request(body, {}, make_settings())
    preds = predictor.predict(list(request.instances), top_k=request.top_k)
    assert _ids(preds) == [_ids(predictor.predict(x[i]))[0] for i in (6, 8, 7)]


@pytest.mark.parametrize("bad,error,needle", [
    (float("nan"), InvalidImage, "finite"),
    (float("inf"), InvalidImage, "finite"),
    (-1.0, InvalidImage, "negative"),
    (256.0, InvalidImage, "at most 255"),
])
def test_bad_pixel_values_name_the_instance(predictor: FMPredictor, bad: float, error: type[PipelineError],
                                            needle: str) -> None:
    images = np.zeros((4, 28, 28), np.float32)
    images[2, 5, 5] = bad
    with pytest.raises(error, match=needle) as info:
        predictor.predict(images)
    assert info.value.index == 2
    with pytest.raises(error) as info:
        predictor.predict([images[0].tolist(), images[2].tolist()])
    assert info.value.index == 1


@pytest.mark.parametrize("instance,needle", [
    (np.zeros((27, 28)).tolist(), "shape"),
    (list(range(783)), "shape"),
    ([[0] * 28] * 27 + [[0] * 27], "rectangular"),
    ([["a"] * 28] * 28, "numbers"),
    ({"url": "http://example.com/x.png"}, "b64"),
    ({"b64": "not base64!"}, "base64"),
    ({"b64": base64.b64encode(b"plain text").decode()}, "PNG or JPEG"),
])
def test_malformed_instances_are_invalid_images_with_index(predictor: FMPredictor, instance: Any,
                                                           needle: str) -> None:
    good = np.zeros((28, 28)).tolist()
    with pytest.raises(InvalidImage, match=needle) as info:
        predictor.predict([good, instance])
    assert info.value.index == 1
    assert info.value.to_dict()["index"] == 1
    assert info.value.code in {"invalid_image", "invalid_shape", "invalid_values", "invalid_base64"}


@pytest.mark.parametrize("inputs", [np.zeros((3, 28, 27)), np.zeros((3, 785)), np.zeros((2, 2, 28, 28)), 42])
def test_arrays_of_the_wrong_shape_are_invalid_requests(predictor: FMPredictor, inputs: Any) -> None:
    with pytest.raises(InvalidRequest):
        predictor.predict(inputs)


def test_value_scale_rule(predictor: FMPredictor, fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    x = fashion_test[0][:50]
    assert _ids(predictor.predict((x / 255.0).tolist())) == _ids(predictor.predict(x))  # 0-1 floats
    assert _ids(predictor.predict(x.astype(np.float64))) == _ids(predictor.predict(x))  # 0-255 floats
    # uint8 is always 0-255: an image of 0s and 1s stays nearly black instead of becoming white.
    faint = (x[:1] > 0).astype(np.uint8)
    assert np.array_equal(predictor.to_pixels(faint), faint)
    assert predictor.to_pixels(faint.astype(np.float32)).max() == 255


def test_local_paths_are_refused_in_messages_but_read_by_the_command_line(
    predictor: FMPredictor, fashion_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path = tmp_path / "garment.jpg"
    path.write_bytes(encode(photo_of(fashion_test[0][0], np.random.default_rng(5))))
    for instance in (str(path), f"file://{path}", {"gcs_uri": str(path)}):
        with pytest.raises(ForbiddenSource) as info:
            predictor.predict([np.zeros(784).tolist(), instance])
        assert info.value.index == 1
    by_file = predictor.predict_files([path], top_k=2)
    assert by_file[0]["class_id"] == predictor.predict(fashion_test[0][:1])[0]["class_id"]
    with pytest.raises(InvalidImage) as missing:
        predictor.predict_files([path, tmp_path / "missing.png"])
    assert missing.value.index == 1


def test_gs_uris_only_for_allowed_buckets(predictor: FMPredictor, gcs_client: Any,
                                          fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    other = "not-allowed-bucket"
    if not gcs_client.bucket(other).exists():
        gcs_client.create_bucket(other)
    gcs_client.bucket(other).blob("x.png").upload_from_string(encode(fashion_test[0][0], ".png"))
    with pytest.raises(ForbiddenSource, match="allow-list") as info:
        predictor.predict([f"gs://{other}/x.png"])
    assert info.value.index == 0 and info.value.code == "forbidden_source"


@pytest.mark.parametrize("name", ["../etc/passwd", "a/./b.png", "a/../../b.png", ".."])
def test_gs_uris_with_dot_segments_are_refused(predictor: FMPredictor, name: str) -> None:
    with pytest.raises(ForbiddenSource, match="segments") as info:
        predictor.predict([np.zeros(784).tolist(), f"gs://{ALLOWED_BUCKET}/{name}"])
    assert info.value.index == 1


def test_gs_uri_errors(predictor: FMPredictor, gcs_client: Any) -> None:
    bucket = gcs_client.bucket(ALLOWED_BUCKET)
    if not bucket.exists():
        gcs_client.create_bucket(ALLOWED_BUCKET)
    with pytest.raises(InvalidImage, match="does not exist") as info:
        predictor.predict([np.zeros(784).tolist(), f"gs://{ALLOWED_BUCKET}/missing.png"])
    assert info.value.index == 1 and info.value.code == "image_not_found"
    small = FMPredictor(predictor.store, settings=make_settings(max_image_bytes=1000),
                        storage_client=gcs_client)
    bucket.blob("big.png").upload_from_string(encode(
        np.random.default_rng(0).integers(0, 255, (100, 100), dtype=np.uint8), ".png"))
    with pytest.raises(PayloadTooLarge):
        small.predict([f"gs://{ALLOWED_BUCKET}/big.png"])


def test_too_many_images_is_refused(predictor: FMPredictor) -> None:
    limited = FMPredictor(predictor.store, settings=make_settings(max_images_per_request=3))
    assert len(limited.predict(np.zeros((3, 28, 28), np.uint8))) == 3
    for inputs in (np.zeros((4, 28, 28), np.uint8), [np.zeros(784).tolist()] * 4):
        with pytest.raises(PayloadTooLarge):
            limited.predict(inputs)


def test_same_request_gives_the_same_result(predictor: FMPredictor,
                                            fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    x = fashion_test[0][:16]
    first = json.dumps(predictor.predict(x, top_k=3))
    predictor.predict(fashion_test[0][100:103])  # a different batch size in between
    assert json.dumps(predictor.predict(x, top_k=3)) == first
    assert json.dumps(predictor.predict(x[:1], top_k=3)) == json.dumps(json.loads(first)[:1])


def test_empty_input_gives_no_predictions(predictor: FMPredictor) -> None:
    assert predictor.predict([]) == []
    assert predictor.predict(np.zeros((0, 28, 28))) == []


def test_command_line_classifies_local_photos(tiny_model: Path, tmp_path: Path,
                                              fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    import subprocess
    import sys

    x = fashion_test[0]
    paths = [tmp_path / "boot.jpg", tmp_path / "trouser.png"]
    paths[0].write_bytes(encode(photo_of(x[0], np.random.default_rng(8))))
    paths[1].write_bytes(encode(x[2], ".png"))
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-m", "common.predictor", "--model-uri", str(tiny_model), "--top-k", "2",
                          *map(str, paths)], cwd=repo, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in paths]
    assert all(len(line["top_k"]) == 2 for line in lines)
    direct = FMPredictor(str(tiny_model), settings=make_settings()).predict(x[[0, 2]])
    assert [line["class_id"] for line in lines] == [p["class_id"] for p in direct]
    missing = subprocess.run([sys.executable, "-m", "common.predictor", "--model-uri", str(tiny_model),
                              str(tmp_path / "nope.jpg")], cwd=repo, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["index"] == 0

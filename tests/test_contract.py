"""The message contract: every entry point's one validation step, and the messages it produces."""

from __future__ import annotations

import base64
import json

import fastjsonschema
import numpy as np
import pytest

from common import contract
from common.errors import PipelineError
from common.settings import Settings

SETTINGS = Settings(allowed_buckets=("fashion-images",), max_images_per_request=8, max_image_bytes=1000)
ZEROS_28 = [[0] * 28 for _ in range(28)]


def _parse(obj: object, attributes: dict[str, str] | None = None) -> contract.PredictRequest:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return contract.parse_request(data, attributes, SETTINGS)


def test_every_documented_instance_form_is_accepted() -> None:
    flat = list(range(0, 784 * 255, 255))[:784]
    flat = [value % 256 for value in flat]
    request = _parse({
        "request_id": "r-42",
        "top_k": 3,
        "instances": [
            ZEROS_28,
            [[[v] for v in row] for row in ZEROS_28],
            flat,
            [[0.5] * 28 for _ in range(28)],
            {"b64": base64.b64encode(b"\x89PNG not really").decode()},
            {"gcs_uri": "gs://fashion-images/shoes/boot.jpg"},
        ],
    })
    assert request.request_id == "r-42" and request.top_k == 3
    pixels = request.instances[:4]
    assert all(isinstance(p, np.ndarray) and p.shape == (28, 28) and p.dtype == np.float32 for p in pixels)
    np.testing.assert_allclose(pixels[2].reshape(-1), np.asarray(flat, np.float32) / 255.0)
    # Values that never exceed 1 are read on the 0-1 scale, not divided again.
    assert float(pixels[3].max()) == pytest.approx(0.5)
    assert request.instances[4] == contract.EncodedImage(b"\x89PNG not really")
    assert request.instances[5] == contract.GcsImage("fashion-images", "shoes/boot.jpg")


def test_binary_form_round_trips_pixels_and_options() -> None:
    pixels = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
    body, attributes = contract.encode_pixels("bin-1", pixels, top_k=2, model="fashion-cnn")
    assert len(body) == 2 * 784
    request = _parse(body, attributes)
    assert (request.request_id, request.top_k, request.model) == ("bin-1", 2, "fashion-cnn")
    np.testing.assert_allclose(np.stack(request.instances) * 255.0, pixels, atol=1e-3)


BAD_REQUESTS = [
    ("malformed json", b'{"request_id": "r", ', {}, "invalid_json", None),
    ("not utf-8", b'\xff\xfe{}', {}, "invalid_json", None),
    ("too deeply nested", b"[" * 50_000 + b"]" * 50_000, {}, "invalid_json", None),
    ("not an object", [1, 2], {}, "invalid_request", None),
    ("missing request id", {"instances": [ZEROS_28]}, {}, "invalid_request", None),
    ("request id with spaces", {"request_id": "a b", "instances": [ZEROS_28]}, {}, "invalid_request", None),
    ("unknown field", {"request_id": "r", "x": 1, "instances": [ZEROS_28]}, {}, "invalid_request", "r"),
    ("empty batch", {"request_id": "r", "instances": []}, {}, "empty_batch", "r"),
    ("too many images", {"request_id": "r", "instances": [ZEROS_28] * 9}, {}, "too_many_images", "r"),
    ("wrong shape", {"request_id": "r", "instances": [[1, 2, 3]]}, {}, "invalid_shape", "r"),
    ("ragged rows", {"request_id": "r", "instances": [[[0] * 28] * 27 + [[0] * 5]]}, {}, "invalid_shape", "r"),
    ("NaN pixel", b'{"request_id": "r", "instances": [[' + b", ".join([b"NaN"] * 784) + b"]]}", {},
     "invalid_values", "r"),
    ("negative pixel", {"request_id": "r", "instances": [[-1] * 784]}, {}, "invalid_values", "r"),
    ("pixel over 255", {"request_id": "r", "instances": [[256] * 784]}, {}, "invalid_values", "r"),
    ("string pixels", {"request_id": "r", "instances": [["1"] * 784]}, {}, "invalid_values", "r"),
    ("local path", {"request_id": "r", "instances": ["/etc/passwd"]}, {}, "forbidden_source", "r"),
    ("file uri", {"request_id": "r", "instances": [{"gcs_uri": "file:///etc/passwd"}]}, {},
     "forbidden_source", "r"),
    ("bucket off the allow-list", {"request_id": "r", "instances": [{"gcs_uri": "gs://other/a.png"}]}, {},
     "forbidden_source", "r"),
    ("dot segments in a gs:// name", {"request_id": "r", "instances": [{"gcs_uri": "gs://fashion-images/a/../b.png"}]},
     {}, "forbidden_source", "r"),
    ("bad base64", {"request_id": "r", "instances": [{"b64": "%%%"}]}, {}, "invalid_base64", "r"),
    ("image over the byte limit", {"request_id": "r", "instances": [{"b64": "A" * 4000}]}, {},
     "payload_too_large", "r"),
    ("unknown model", {"request_id": "r", "model": "resnet", "instances": [ZEROS_28]}, {}, "unknown_model", "r"),
    ("top_k over the limit", {"request_id": "r", "top_k": 11, "instances": [ZEROS_28]}, {}, "invalid_request", "r"),
    ("unsupported content type", b"{}", {"content_type": "text/plain", "request_id": "r"},
     "unsupported_content_type", "r"),
    ("binary without id", b"\0" * 784, {"content_type": contract.PIXELS_CONTENT_TYPE, "shape": "1,28,28"},
     "invalid_request", None),
    ("binary with wrong length", b"\0" * 700, {"content_type": contract.PIXELS_CONTENT_TYPE, "shape": "1,28,28",
                                               "request_id": "b"}, "invalid_shape", "b"),
    ("message over the size limit", b" " * (SETTINGS.max_request_bytes + 1), {"request_id": "big"},
     "payload_too_large", "big"),
]


@pytest.mark.parametrize(("data", "attributes", "code", "request_id"),
                         [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_their_stable_code_and_the_request_id(
    data: object, attributes: dict[str, str], code: str, request_id: str | None
) -> None:
    with pytest.raises(PipelineError) as caught:
        _parse(data, attributes)
    error = contract.make_error(caught.value, message_id="m-1")
    assert error["error"]["code"] == code
    assert error["request_id"] == request_id
    contract.validate("error", error)  # the schema's enum lists every stable code


def test_failing_instance_is_named_by_index() -> None:
    with pytest.raises(PipelineError) as caught:
        _parse({"request_id": "r", "instances": [ZEROS_28, ZEROS_28, [7]]})
    assert caught.value.index == 2
    assert contract.make_error(caught.value)["error"]["index"] == 2


def test_results_follow_the_result_schema() -> None:
    prediction = {"label": "Ankle boot", "class_id": 9, "score": 0.97,
                  "top_k": [{"label": "Ankle boot", "class_id": 9, "score": 0.97}]}
    result = contract.make_result("r-1", "fashion-cnn", "v1", [prediction], started=0.0)
    contract.validate("result", result)
    with pytest.raises(fastjsonschema.JsonSchemaException):
        contract.validate("result", {**result, "predictions": []})


def test_binary_encoder_refuses_what_the_decoder_would_reject() -> None:
    with pytest.raises(ValueError, match="uint8"):
        contract.encode_pixels("r", np.zeros((1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="request_id"):
        contract.encode_pixels("bad id", np.zeros((1, 28, 28), np.uint8))

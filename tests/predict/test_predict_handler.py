"""The broker-agnostic predict step, called directly (tier 1 of the function tests)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cloudevents.http import CloudEvent
from fm_gcs import PrivateEmulator, client_for, upload_folder
from fm_support import make_settings
from fm_synth import encode, photo_of

from common.contract import encode_pixels, validate
from common.errors import StorageUnavailable
from common.model_store import ModelStore
from common.predict_handler import (
    CloudLoggingFormatter,
    Envelope,
    PredictHandler,
    envelope_from_event,
    event_from_envelope,
)
from common.predictor import FMPredictor

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def handler(tiny_model: Path) -> PredictHandler:
    settings = make_settings(model_uri=str(tiny_model))
    return PredictHandler(settings, FMPredictor(str(tiny_model), settings=settings))


def _json_envelope(body: dict[str, Any], message_id: str = "m-1") -> Envelope:
    return Envelope(json.dumps(body).encode(), {"content_type": "application/json"}, message_id)


def test_golden_pubsub_event_to_envelope_and_back() -> None:
    golden = json.loads((GOLDEN / "pubsub_event.json").read_text())
    expected = golden["envelope"]
    for event in (golden["event"], CloudEvent(
            {k: v for k, v in golden["event"].items() if k not in ("data", "specversion")}, golden["event"]["data"])):
        env = envelope_from_event(event)
        assert env.data.decode() == expected["data_utf8"]
        assert env.attributes == expected["attributes"]
        assert env.message_id == expected["message_id"]
        assert env.delivery_attempt == expected["delivery_attempt"]
    again = envelope_from_event(event_from_envelope(envelope_from_event(golden["event"]), "//kafka/topics/t"))
    assert again == envelope_from_event(golden["event"])


def test_a_mixed_batch_gives_one_outcome_per_message_in_order(
    handler: PredictHandler, fashion_test: tuple[np.ndarray, np.ndarray]
) -> None:
    x = fashion_test[0]
    photo = base64.b64encode(encode(photo_of(x[3], np.random.default_rng(1)))).decode()
    binary, attrs = encode_pixels("bin-1", x[10:13], top_k=2)
    envelopes = [
        _json_envelope({"request_id": "ok-1", "top_k": 3, "instances": [x[0].tolist(), {"b64": photo}]}, "m-1"),
        Envelope(b"{not json", {"request_id": "broken-1"}, "m-2"),
        Envelope(binary, attrs, "m-3"),
        _json_envelope({"request_id": "bad-img", "instances": [x[1].tolist(), {"b64": base64.b64encode(
            b"\x89PNG\r\n\x1a\n" + b"\x00" * 20).decode()}]}, "m-4"),
        _json_envelope({"request_id": "other-model", "model": "resnet", "instances": [x[1].tolist()]}, "m-5"),
    ]
    outcomes = handler.handle(envelopes)
    assert [o.kind for o in outcomes] == ["result", "error", "result", "error", "error"]
    assert [o.request_id for o in outcomes] == ["ok-1", "broken-1", "bin-1", "bad-img", "other-model"]
    assert [o.message_id for o in outcomes] == ["m-1", "m-2", "m-3", "m-4", "m-5"]
    assert outcomes[1].payload["error"]["code"] == "invalid_json"
    assert outcomes[3].payload["error"]["code"] == "invalid_image" and outcomes[3].payload["error"]["index"] == 1
    assert outcomes[4].payload["error"]["code"] == "unknown_model"
    for o in outcomes:
        validate("result" if o.ok else "error", o.payload)
    first, binary_result = outcomes[0].payload, outcomes[2].payload
    assert first["model_version"] == handler.predictor.model_version
    assert len(first["predictions"]) == 2 and len(first["predictions"][0]["top_k"]) == 3
    assert len(binary_result["predictions"][0]["top_k"]) == 2
    direct = handler.predictor.predict(x[10:13], top_k=2)
    assert binary_result["predictions"] == direct
    assert first["predictions"][0]["class_id"] == handler.predictor.predict(x[0])[0]["class_id"]


def test_all_images_of_a_batch_go_through_one_model_call(
    handler: PredictHandler, fashion_test: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = handler.predictor.load()
    calls: list[int] = []
    real = model.predict_proba

    def spy(batch: np.ndarray) -> np.ndarray:  # counts calls into the real model
        calls.append(len(batch))
        return real(batch)

    monkeypatch.setattr(model, "predict_proba", spy)
    envelopes = [_json_envelope({"request_id": f"r-{i}", "instances": fashion_test[0][i : i + 3].tolist()})
                 for i in range(0, 30, 3)]
    outcomes = handler.handle(envelopes)
    assert all(o.ok for o in outcomes) and calls == [30]


def test_redelivery_gives_the_same_prediction(handler: PredictHandler,
                                              fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    env = _json_envelope({"request_id": "same-1", "top_k": 3, "instances": fashion_test[0][:4].tolist()})
    alone = handler.handle([env])[0].payload
    crowd = handler.handle([_json_envelope({"request_id": "x", "instances": fashion_test[0][50:90].tolist()}),
                            env])[1].payload
    assert alone["request_id"] == crowd["request_id"] == "same-1"
    assert alone["predictions"] == crowd["predictions"]


def test_storage_down_at_cold_start_raises_for_redelivery(tiny_model: Path, tmp_path: Path,
                                                          fashion_test: tuple[np.ndarray, np.ndarray]) -> None:
    with PrivateEmulator() as emulator:
        client = client_for(emulator.endpoint)
        uri = upload_folder(client, "models", "fashion", tiny_model)
    # The emulator is gone: the first message of a new instance cannot load the model.
    settings = make_settings(model_uri=uri, model_cache_dir=str(tmp_path))
    store = ModelStore(uri, cache_dir=tmp_path, client=client, timeout_s=2, retry_deadline_s=1)
    cold = PredictHandler(settings, FMPredictor(store, settings=settings))
    with pytest.raises(StorageUnavailable):
        cold.handle([_json_envelope({"request_id": "cold-1", "instances": fashion_test[0][:1].tolist()})])


def test_integrity_failure_answers_every_request_with_an_error(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for p in tiny_model.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "model.tflite").write_bytes(b"not the model")
    settings = make_settings(model_uri=str(folder))
    broken = PredictHandler(settings, FMPredictor(str(folder), settings=settings))
    outcomes = broken.handle([_json_envelope({"request_id": f"r-{i}", "instances": [[0] * 784]}) for i in range(3)])
    assert [o.payload["error"]["code"] for o in outcomes] == ["model_integrity"] * 3
    assert [o.request_id for o in outcomes] == ["r-0", "r-1", "r-2"]


def test_malformed_event_becomes_an_error_outcome(handler: PredictHandler) -> None:
    outcomes = handler.handle_events([{"id": "e-9", "data": {"no": "message"}},
                                      event_from_envelope(_json_envelope({"request_id": "fine", "instances": [
                                          [0] * 784]}), "test")])
    assert [o.kind for o in outcomes] == ["error", "result"]
    assert outcomes[0].message_id == "e-9" and outcomes[0].payload["error"]["code"] == "invalid_request"


def test_logs_are_cloud_logging_json_with_request_fields(handler: PredictHandler,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="predict"):
        handler.handle([_json_envelope({"request_id": "logged-1", "instances": [[0] * 784]})])
    record = next(r for r in caplog.records if r.getMessage() == "predicted")
    line = json.loads(CloudLoggingFormatter().format(record))
    assert line["severity"] == "INFO" and line["message"] == "predicted"
    assert line["request_id"] == "logged-1"
    assert line["model_version"] == handler.predictor.model_version
    assert line["latency_ms"] >= 0 and line["time"].endswith("Z")

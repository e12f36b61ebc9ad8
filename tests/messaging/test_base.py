"""The broker-independent part of the contract: how payloads and attributes become bytes, no service needed."""

from __future__ import annotations

import json

import pytest

from common.errors import PublishError
from common.messaging.base import Message, encode_payload, message_size, validate_attributes


def test_dict_becomes_compact_utf8_json_with_content_type() -> None:
    data, attrs = encode_payload({"label": "Ankle boot", "score": 0.97, "note": "naïve"}, {"request_id": "r-1"})
    assert data == '{"label":"Ankle boot","score":0.97,"note":"naïve"}'.encode()
    assert attrs == {"request_id": "r-1", "content_type": "application/json"}


def test_dict_payload_overrides_a_wrong_content_type() -> None:
    _, attrs = encode_payload({"a": 1}, {"content_type": "text/plain"})
    assert attrs["content_type"] == "application/json"


def test_bytes_travel_unchanged_and_keep_the_callers_content_type() -> None:
    pixels = bytes(range(256))
    for payload in (pixels, bytearray(pixels), memoryview(pixels)):
        data, attrs = encode_payload(payload, {"content_type": "application/octet-stream"})
        assert data == pixels
        assert attrs == {"content_type": "application/octet-stream"}


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": float("-inf")}, {"x": object()}, {"x": b"raw"},
                                 {1.5j: 1}])
def test_values_json_cannot_carry_are_refused(bad: dict[object, object]) -> None:
    with pytest.raises(PublishError) as info:
        encode_payload(bad, None)  # type: ignore[arg-type]
    assert info.value.code == "publish_rejected"


@pytest.mark.parametrize("payload", [["a", "list"], "text", 42, None])
def test_only_dicts_and_bytes_are_payloads(payload: object) -> None:
    with pytest.raises(PublishError):
        encode_payload(payload, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("attributes", [{"n": 1}, {"b": b"bytes"}, {1: "x"}, {"": "empty name"}])
def test_attributes_must_map_str_to_str(attributes: dict[object, object]) -> None:
    with pytest.raises(PublishError):
        validate_attributes(attributes)  # type: ignore[arg-type]


def test_message_size_counts_data_attributes_and_key_in_utf8_bytes() -> None:
    assert message_size(b"12345", {"ké": "vé"}, "kéy") == 5 + 3 + 3 + 4


def test_message_decodes_its_json_and_exposes_content_type() -> None:
    message = Message(data=json.dumps({"a": [1, 2]}).encode(), attributes={"content_type": "application/json"},
                      key=None, message_id="1")
    assert message.json() == {"a": [1, 2]}
    assert message.content_type == "application/json"
    with pytest.raises(ValueError):
        Message(data=b"\xff not json", attributes={}, key=None, message_id="2").json()

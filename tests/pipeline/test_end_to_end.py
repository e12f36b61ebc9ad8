"""The whole Pub/Sub pipeline for real: ingest (HTTP) -> requests topic -> push subscription -> predict
(functions-framework, model served from the storage emulator) -> results and errors topics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from pipeline_helpers import model_dir

from common.contract import validate
from common.settings import Settings
from pipeline.local_run import Collector, create_pubsub_resources, post_upload, upload_model
from pipeline.requests import array_request, load_test_set, png_bytes
from pipeline.results import Follower
from pipeline.servers import REPO_ROOT, FunctionServer, settings_env


@dataclass
class Pipeline:
    settings: Settings
    ingest_url: str
    collector: Collector


@pytest.fixture(scope="module")
def pipeline(pubsub_emulator: Any, gcs_emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tag = f"e2e{uuid.uuid4().hex[:6]}"
    work = tmp_path_factory.mktemp("e2e")
    model_uri = upload_model(model_dir(), pubsub_emulator.project, bucket_name=f"{tag}-models")
    settings = Settings(project_id=pubsub_emulator.project, requests_topic=f"{tag}-requests",
                        results_topic=f"{tag}-results", errors_topic=f"{tag}-errors", model_uri=model_uri,
                        model_cache_dir=str(work / "cache"))
    env = {**settings_env(settings), "PUBSUB_EMULATOR_HOST": pubsub_emulator.host,
           "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    predict = FunctionServer("predict", "predict", REPO_ROOT / "functions" / "predict" / "main.py",
                             signature_type="cloudevent", env=env, log_dir=work).start()
    ingest = FunctionServer("ingest", "ingest", REPO_ROOT / "functions" / "ingest" / "main.py", env=env,
                            log_dir=work).start()
    collector = Collector()
    follower = Follower(settings, collector.add, name=tag)
    try:
        create_pubsub_resources(settings, predict.url)
        follower.start()
        yield Pipeline(settings, ingest.url, collector)
    finally:
        follower.stop()
        ingest.stop()
        predict.stop()


def test_test_images_through_ingest_come_back_labelled(pipeline: Pipeline) -> None:
    images, labels = load_test_set(24, offset=500)
    batch = [array_request(f"e2e-arr-{i}", images[i : i + 1], top_k=3) for i in range(20)]
    answer = requests.post(pipeline.ingest_url, json=batch, timeout=30)
    assert answer.status_code == 202, answer.text
    for i in range(20, 24):
        post_upload(pipeline.ingest_url, f"{i}.png", png_bytes(images[i]), {"request_id": f"e2e-png-{i}"})
    truth = {f"e2e-arr-{i}": int(labels[i]) for i in range(20)} | {f"e2e-png-{i}": int(labels[i])
                                                                   for i in range(20, 24)}

    missing = pipeline.collector.wait_for(set(truth), timeout=90)
    assert not missing
    correct = 0
    for rid, label in truth.items():
        outcome = pipeline.collector.outcomes[rid]
        assert outcome.kind == "result", outcome.payload
        validate("result", outcome.payload)
        [prediction] = outcome.predictions
        correct += prediction["class_id"] == label
        if rid.startswith("e2e-arr"):
            assert len(prediction["top_k"]) == 3
    assert correct >= 20, f"only {correct}/24 test images labelled correctly"


def test_an_image_that_fails_to_decode_lands_on_the_errors_topic(pipeline: Pipeline) -> None:
    # The header is intact (ingest checks only that), the pixel data is cut off: predict must say so.
    truncated = png_bytes(load_test_set(1)[0][0])[:60]
    post_upload(pipeline.ingest_url, "cut.png", truncated, {"request_id": "e2e-cut"})
    assert not pipeline.collector.wait_for({"e2e-cut"}, timeout=60)
    outcome = pipeline.collector.outcomes["e2e-cut"]
    assert outcome.kind == "error"
    validate("error", outcome.payload)
    assert outcome.error["code"] == "invalid_image"

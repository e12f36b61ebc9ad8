"""Pub/Sub-triggered predict Cloud Function: decode, validate, predict, publish the outcome.

Entry point ``predict`` (``--signature-type cloudevent``) receives one ``messagePublished``
CloudEvent per call, from Eventarc or from a push subscription through functions-framework.

* A valid request: its result goes to ``RESULTS_TOPIC``; the function returns once the broker
  acknowledged it, so a result is never lost when the instance is frozen after returning.
* An invalid request (bad JSON, schema, image, unknown model, ...): a structured error with the
  request id and a stable code goes to ``ERRORS_TOPIC`` and the function returns normally, so
  Pub/Sub does not redeliver a poison message.
* A transient fault (Cloud Storage or the broker unreachable): the function raises, the platform
  answers 500, and Pub/Sub delivers the message again later.

The model is loaded lazily on the first message and kept for the life of the instance; logs are
Cloud Logging JSON lines carrying request id, model version and latency.
"""

from __future__ import annotations

import logging
from typing import Any

import functions_framework

from common.messaging import SharedPublisher
from common.predict_handler import PredictHandler, configure_logging, publish_outcomes
from common.settings import Settings

# Read at import so that wrong configuration fails the instance at start-up, not the first message.
SETTINGS = Settings.from_env()
configure_logging(SETTINGS.log_level)
log = logging.getLogger("predict")

HANDLER = PredictHandler(SETTINGS)  # the model itself loads on the first message

# Created on first use and shared by every request of this instance. Unbatched: each invocation
# publishes one outcome and waits for it, so a batch would only add its max_latency to every call.
PUBLISHER = SharedPublisher(SETTINGS, batching=False)


@functions_framework.cloud_event
def predict(cloud_event: Any) -> None:
    """Entry point (``--target predict``): one Pub/Sub message in, one result or error out."""
    outcomes = HANDLER.handle_events([cloud_event])
    publish_outcomes(PUBLISHER.get(), outcomes, SETTINGS)

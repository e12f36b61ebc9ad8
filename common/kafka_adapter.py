"""Run the predict function on Kafka: a long-lived consumer-group member with micro-batching.

    python -m common.kafka_adapter --bootstrap-servers 127.0.0.1:9092 \\
        --requests-topic fashion-requests --results-topic fashion-results [--errors-topic ...]

Each Kafka record is wrapped in the very CloudEvent shape Pub/Sub delivers to the Cloud Function
(:func:`common.predict_handler.event_from_envelope`) and goes through the same
:meth:`PredictHandler.handle_events` the function's entry point calls, in its two halves
(``prepare_events`` here, ``finish`` on the model thread); only the transport differs:

* Records are gathered into micro-batches of up to ``--max-batch`` records or ``--max-wait-ms``
  after the first one, and every image of a batch goes through one model call, on a model thread:
  the next batch is polled and parsed meanwhile (``--max-in-flight`` batches at most).
* Results and errors are produced to their topics (acks=all) and the batch's offsets are committed
  only after every produce was acknowledged. If anything transient fails (storage, broker), nothing
  is committed, the partitions are rewound and the batch is delivered again (at-least-once; a
  redelivered request yields the same result under the same request id).
* A batch must finish within ``max.poll.interval.ms``, so batches are bounded, and the model is
  loaded before joining the group (a first batch is not slowed by the download).
* SIGTERM or SIGINT: the batches in hand are finished and committed, the member leaves the group,
  and the process exits 0.

Options not given on the command line come from the environment (``common.settings``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import Any

from common.errors import BrokerUnavailable, PipelineError
from common.messaging.base import BasicPublisher, Message
from common.messaging.kafka.listener import KafkaListener
from common.predict_handler import (
    Envelope,
    PredictHandler,
    Prepared,
    acknowledged,
    configure_logging,
    event_from_envelope,
    send_outcomes,
)
from common.settings import Settings

log = logging.getLogger("predict.kafka")

DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_WAIT_MS = 20
DEFAULT_MAX_IN_FLIGHT = 2  # one batch being prepared while the model answers the previous one
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000


def record_event(message: Message, topic: str) -> dict[str, Any]:
    """The Pub/Sub-shaped CloudEvent for one Kafka record (headers become attributes)."""
    envelope = Envelope(message.data, dict(message.attributes), message.message_id, message.delivery_attempt)
    return event_from_envelope(envelope, source=f"//kafka/topics/{topic}")


class KafkaPredictAdapter:
    """Consumes the requests topic as a group member and answers every record on Kafka."""

    def __init__(
        self,
        settings: Settings,
        *,
        handler: PredictHandler | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: int = DEFAULT_MAX_WAIT_MS,
        max_poll_interval_ms: int = DEFAULT_MAX_POLL_INTERVAL_MS,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        **listener_options: Any,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be >= 1 and max_wait_ms >= 0")
        self.settings = settings
        self.handler = handler or PredictHandler(settings)
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.max_in_flight = max_in_flight
        self.listener_options = {"max_poll_interval_ms": max_poll_interval_ms,
                                 "max_poll_records": max_batch, **listener_options}
        self.stop_event = threading.Event()
        self.batches = 0
        self.records = 0
        self._publisher: BasicPublisher | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._publisher_broken = threading.Event()
        self._listener: Any = None
        self._created = threading.Event()

    @property
    def ready(self) -> bool:
        """True once partitions are assigned and records flow."""
        return self._listener is not None and bool(self._listener.ready)

    def wait_ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for partition assignment; tests produce only after it."""
        start = time.monotonic()
        if not self._created.wait(timeout):
            return False
        return bool(self._listener.wait_ready(max(0.0, timeout - (time.monotonic() - start))))

    def stop(self) -> None:
        """Finish the current batch, commit, and return from :meth:`run`."""
        self.stop_event.set()

    def run(self) -> None:
        """Load the model, join the group, and answer batches until :meth:`stop` or a signal."""
        model = self.handler.predictor.load()  # fail fast on a bad model, before taking partitions
        log.info("model loaded", extra={"json_fields": {"model_version": model.manifest.version,
                                                        "runtime": model.runtime}})
        self._publisher = self._new_publisher()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-model")
        try:
            self._listener = KafkaListener(self.settings.kafka_bootstrap_servers, self.settings.requests_topic,
                                           group_id=self.settings.kafka_group_id, **self.listener_options)
            self._created.set()
            try:
                log.info("consuming", extra={"json_fields": {
                    "topic": self.settings.requests_topic, "group_id": self.settings.kafka_group_id,
                    "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms}})
                self._listener.listen_batch(self._on_batch, self.max_batch, self.max_wait_ms,
                                            stop_event=self.stop_event, max_in_flight=self.max_in_flight)
            finally:
                self._listener.close()
        finally:
            self._worker.shutdown(wait=True)
            if self._publisher is not None:
                self._publisher.close()
        log.info("stopped", extra={"json_fields": {"batches": self.batches, "records": self.records}})

    def _new_publisher(self) -> BasicPublisher:
        from common.messaging.kafka.publisher import KafkaPublisher

        return KafkaPublisher(self.settings.kafka_bootstrap_servers, publish_timeout_s=self.settings.publish_timeout_s)

    def _working_publisher(self) -> BasicPublisher:
        """The producer, replaced by a fresh one after publishes went unanswered.

        Seen with kafka-python 3.0.12: once batches expired during a broker outage, the idempotent
        producer never delivers again, even after the broker is back. A fresh producer does.
        """
        if self._publisher is not None and not self._publisher_broken.is_set():
            return self._publisher
        old, self._publisher = self._publisher, None
        self._publisher_broken.clear()
        if old is not None:
            log.warning("publishes unanswered: replacing the Kafka producer")
            try:
                old.close(timeout=1.0)
            except Exception:  # it is being discarded because it is broken
                log.debug("closing the old producer failed", exc_info=True)
        self._publisher = self._new_publisher()
        return self._publisher

    def _on_batch(self, messages: list[Message]) -> Future[None]:
        """Prepare one micro-batch here, then hand it to the model thread; the future says when it is done.

        Preparing (parsing, decoding images) runs while the model thread answers the previous batch,
        and the model call releases the GIL, so the two overlap on two cores. The listener commits
        the batch's offsets once the future resolved, that is once every outcome was acknowledged.
        """
        started = time.monotonic()
        events = [record_event(m, self.settings.requests_topic) for m in messages]
        prepared = self.handler.prepare_events(events)  # TransientError propagates: no commit, redelivery
        done: Future[None] = Future()
        if self._worker is None:
            raise RuntimeError("the adapter is not running")
        self._worker.submit(self._finish_batch, prepared, started, done)
        return done

    def _finish_batch(self, prepared: Prepared, started: float, done: Future[None]) -> None:
        """On the model thread: one model call, then queue every outcome. ``done`` resolves when the
        broker acknowledged them all; the thread does not wait for that and goes on to the next batch."""
        try:
            outcomes = self.handler.finish(prepared)  # TransientError: the batch comes again
            acks = acknowledged(send_outcomes(self._working_publisher(), outcomes, self.settings))
        except BaseException as exc:
            done.set_exception(exc)
            return
        records, errors = len(outcomes), sum(not o.ok for o in outcomes)  # not the outcomes: they may be big
        acks.add_done_callback(lambda f: self._acknowledged(f, records, errors, started, done))

    def _acknowledged(self, acks: Future[list[str]], records: int, errors: int, started: float,
                      done: Future[None]) -> None:
        """Runs on the producer's thread once a batch's publishes all resolved."""
        failure = acks.exception()
        if failure is not None:
            if isinstance(failure, BrokerUnavailable):
                self._publisher_broken.set()  # replaced by the model thread before the next batch
            done.set_exception(failure)
            return
        self.batches += 1
        self.records += records
        elapsed_ms = (time.monotonic() - started) * 1000
        fields = {"records": records, "errors": errors, "batch_ms": round(elapsed_ms, 1)}
        if elapsed_ms > self.max_poll_interval_ms / 2:
            # Half of max.poll.interval.ms gone in one batch: the group may soon evict this member.
            log.warning("slow batch: lower --max-batch", extra={"json_fields": {
                **fields, "max_poll_interval_ms": self.max_poll_interval_ms}})
        else:
            log.debug("batch answered", extra={"json_fields": fields})
        done.set_result(None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m common.kafka_adapter",
                                     description="Answer prediction requests from a Kafka topic.")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--requests-topic", help="topic to consume (REQUESTS_TOPIC)")
    parser.add_argument("--results-topic", help="topic for results (RESULTS_TOPIC)")
    parser.add_argument("--errors-topic", help="topic for structured errors (ERRORS_TOPIC)")
    parser.add_argument("--group-id", help="consumer group (KAFKA_GROUP_ID)")
    parser.add_argument("--model-uri", help="model folder or gs:// prefix (MODEL_URI)")
    parser.add_argument("--model-runtime", choices=("litert", "keras"), help="MODEL_RUNTIME")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"records per model call at most (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-wait-ms", type=int, default=DEFAULT_MAX_WAIT_MS,
                        help=f"wait after a batch's first record (default {DEFAULT_MAX_WAIT_MS})")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                        help="batches started before the oldest is committed (default %(default)s)")
    parser.add_argument("--max-poll-interval-ms", type=int, default=DEFAULT_MAX_POLL_INTERVAL_MS,
                        help="Kafka max.poll.interval.ms; a batch must finish within it")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000, help="Kafka session.timeout.ms")
    parser.add_argument("--heartbeat-interval-ms", type=int, default=3_000, help="Kafka heartbeat.interval.ms")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(
            broker="kafka", kafka_bootstrap_servers=args.bootstrap_servers, requests_topic=args.requests_topic,
            results_topic=args.results_topic, errors_topic=args.errors_topic, kafka_group_id=args.group_id,
            model_uri=args.model_uri, model_runtime=args.model_runtime)
    except PipelineError as exc:
        print(f"configuration error: {exc.message}")
        return 2
    configure_logging(settings.log_level)
    adapter = KafkaPredictAdapter(settings, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                  max_poll_interval_ms=args.max_poll_interval_ms, max_in_flight=args.max_in_flight,
                                  session_timeout_ms=args.session_timeout_ms,
                                  heartbeat_interval_ms=args.heartbeat_interval_ms)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal received: finishing the current batch", extra={"json_fields": {"signal": signum}})
        adapter.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        adapter.run()
    except PipelineError as exc:
        log.error("adapter stopped on error", extra={"json_fields": {"code": exc.code, "error": exc.message}})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

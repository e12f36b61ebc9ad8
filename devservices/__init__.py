"""Start, wait for and stop the real services the tests and local runs need, on loopback, without Docker.

Dev and test tooling only; never deployed. Three services:

* :func:`start_pubsub` -- the Pub/Sub emulator (``gcloud beta emulators pubsub start``);
* :func:`start_gcs` -- a Cloud Storage emulator (PyPI ``gcp-storage-emulator``, in memory);
* :func:`start_kafka` -- a real single-node Apache Kafka broker in KRaft mode (jars from Maven Central).

Each returns a handle once the service answers real requests; ``stop()`` ends its whole process group,
and handles work as context managers. ``python -m devservices install`` fetches what they need and
``python -m devservices up`` runs them in the foreground.
"""

from devservices._proc import ManagedProcess, ServiceError, free_port, port_in_use, wait_until
from devservices.kafka_broker import KafkaBroker, start_kafka
from devservices.pubsub import PubSubEmulator, start_pubsub
from devservices.storage import StorageEmulator, start_gcs

__all__ = [
    "KafkaBroker",
    "ManagedProcess",
    "PubSubEmulator",
    "ServiceError",
    "StorageEmulator",
    "free_port",
    "port_in_use",
    "start_gcs",
    "start_kafka",
    "start_pubsub",
    "wait_until",
]

"""Every setting of the pipeline, read from environment variables in this one place.

Precedence: an explicit argument to :meth:`Settings.from_env` (tests, command lines), then the
environment, then the default written here. Wrong values fail at start-up with
:class:`~common.errors.ConfigurationError` naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from common.errors import ConfigurationError

BROKERS = ("pubsub", "kafka")
RUNTIMES = ("litert", "keras")

# Name of each environment variable, keyed by the Settings field it fills. Terraform, the README's
# configuration reference and the tests all check against this table.
ENV_VARS: dict[str, str] = {
    "broker": "BROKER",
    "project_id": "GCP_PROJECT",
    "requests_topic": "REQUESTS_TOPIC",
    "results_topic": "RESULTS_TOPIC",
    "errors_topic": "ERRORS_TOPIC",
    "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "kafka_group_id": "KAFKA_GROUP_ID",
    "model_name": "MODEL_NAME",
    "model_uri": "MODEL_URI",
    "model_runtime": "MODEL_RUNTIME",
    "model_cache_dir": "MODEL_CACHE_DIR",
    "allowed_buckets": "ALLOWED_BUCKETS",
    "max_request_bytes": "MAX_REQUEST_BYTES",
    "max_images_per_request": "MAX_IMAGES_PER_REQUEST",
    "max_image_bytes": "MAX_IMAGE_BYTES",
    "max_image_side": "MAX_IMAGE_SIDE",
    "max_top_k": "MAX_TOP_K",
    "publish_timeout_s": "PUBLISH_TIMEOUT_S",
    "log_level": "LOG_LEVEL",
}

# Bundled model, served when MODEL_URI is not set (see models/README.md).
DEFAULT_MODEL_URI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "fashion-cnn")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one process (a function instance, an adapter, a command)."""

    broker: str = "pubsub"
    project_id: str = "local-project"
    requests_topic: str = "fashion-requests"
    results_topic: str = "fashion-results"
    errors_topic: str = "fashion-errors"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_group_id: str = "fashion-predict"
    model_name: str = "fashion-cnn"
    model_uri: str = DEFAULT_MODEL_URI
    model_runtime: str = "litert"
    model_cache_dir: str = "/tmp/fashion-model-cache"
    allowed_buckets: tuple[str, ...] = field(default_factory=tuple)
    max_request_bytes: int = 8 * 1024 * 1024
    max_images_per_request: int = 256
    max_image_bytes: int = 4 * 1024 * 1024
    max_image_side: int = 4096
    max_top_k: int = 10
    publish_timeout_s: float = 10.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.broker not in BROKERS:
            raise ConfigurationError(f"{ENV_VARS['broker']} must be one of {BROKERS}, got {self.broker!r}")
        if self.model_runtime not in RUNTIMES:
            raise ConfigurationError(
                f"{ENV_VARS['model_runtime']} must be one of {RUNTIMES}, got {self.model_runtime!r}"
            )
        for name in ("requests_topic", "results_topic", "errors_topic"):
            value = getattr(self, name)
            if len(value) < 3:
                raise ConfigurationError(f"{ENV_VARS[name]} must have at least 3 characters, got {value!r}")
        for name in ("max_request_bytes", "max_images_per_request", "max_image_bytes", "max_image_side",
                     "max_top_k"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{ENV_VARS[name]} must be a positive integer")
        if self.publish_timeout_s <= 0:
            raise ConfigurationError(f"{ENV_VARS['publish_timeout_s']} must be positive")
        if not self.model_uri:
            raise ConfigurationError(f"{ENV_VARS['model_uri']} must not be empty")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``), then apply explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_VARS[f.name])
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _convert(name: str, type_name: Any, raw: str) -> Any:
    """Turn one environment string into the field's type, naming the variable on failure."""
    type_name = str(type_name)
    try:
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
        if type_name.startswith("tuple"):
            return _csv(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{ENV_VARS[name]}={raw!r} is not a valid {type_name}") from exc
    return raw.strip()

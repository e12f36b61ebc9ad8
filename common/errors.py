"""One error family for the whole pipeline.

Every error carries a stable ``code`` that ends up on the errors topic. Callers decide by class:
a :class:`PermanentError` is answered with a structured error and acknowledged (retrying cannot help);
a :class:`TransientError` is raised so that Pub/Sub or the Kafka loop delivers the message again.
"""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""

    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        index: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.index = index
        # The request this error answers, when it is known; the errors topic message carries it.
        self.request_id = request_id

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of the error message contract."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.index is not None:
            out["index"] = self.index
        return out


class PermanentError(PipelineError):
    """The request itself is wrong: answer once with an error, never retry."""

    code = "invalid_request"


class InvalidRequest(PermanentError):
    """The message does not follow the request contract (JSON, schema, ids, limits)."""

    code = "invalid_request"


class InvalidImage(PermanentError):
    """One image of a request cannot be turned into model input."""

    code = "invalid_image"


class PayloadTooLarge(PermanentError):
    """A body, message or image is over a configured bound."""

    code = "payload_too_large"


class ForbiddenSource(PermanentError):
    """A request named a source it may not read: a local path or a bucket off the allow-list."""

    code = "forbidden_source"


class UnknownModel(PermanentError):
    """The request asked for a model this deployment does not serve."""

    code = "unknown_model"


class ModelIntegrityError(PermanentError):
    """Model artifacts are missing or do not match their manifest's checksums."""

    code = "model_integrity"


class PublishError(PipelineError):
    """A payload cannot be published as given (not serialisable, over the broker's size limit)."""

    code = "publish_rejected"


class TransientError(PipelineError):
    """A dependency is unreachable for now; raise so the message is delivered again."""

    code = "transient"


class StorageUnavailable(TransientError):
    """Cloud Storage (or the emulator) did not answer."""

    code = "storage_unavailable"


class BrokerUnavailable(TransientError):
    """The message broker did not answer within the configured time."""

    code = "broker_unavailable"


class ConfigurationError(PipelineError):
    """Settings are missing or wrong; raised at start-up, not at the first request."""

    code = "configuration_error"

"""Typed errors that cross layers. Each door answers them in its own shape: `status`, `code` and
`type` follow the OpenAI error object on HTTP; RPC carries `code`."""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base of the typed errors. `status` is the HTTP status a door should answer with."""

    status = 500
    code = "internal_error"
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(ControlPlaneError):
    status, code, type = 400, "invalid_request", "invalid_request_error"


class ModelNotFoundError(ControlPlaneError):
    status, code, type = 404, "model_not_found", "invalid_request_error"


class QueueFullError(ControlPlaneError):
    status, code, type = 429, "queue_full", "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(ControlPlaneError):
    status, code, type = 504, "deadline_exceeded", "timeout_error"


class EngineUnavailableError(ControlPlaneError):
    status, code, type = 503, "engine_unavailable", "server_error"


class ShuttingDownError(ControlPlaneError):
    status, code, type = 503, "shutting_down", "server_error"

"""Typed errors that cross layers, and the one translation of them for both doors.

Each class carries everything a door needs: the HTTP `status`, OpenAI's error `type` and
`code`, the RPC `rpc_code` (a member of `sage_client.protocol.ErrorCode`) and, for refusals a
client should retry, `retry_after_s`. The HTTP door (`http/errors.py`) and the RPC server
(`rpc/server.py`) both read these attributes; neither keeps a table of its own. An exception
that is not a `ControlPlaneError` is a bug: a 500 / `internal`.

Engines raise the client-facing ones too (`ContextOverflowError`, `InvalidSamplingError`,
`ChatTemplateMissingError`, `EngineError`): they live here so that engines (layer 3) and the
doors (layer 6) share one definition; `engines.base` re-exports them.
"""

from __future__ import annotations

import math

from sage_client.protocol import ErrorCode


class ControlPlaneError(Exception):
    """Base of the typed errors. `status` is the HTTP status a door answers with."""

    status: int = 500
    code: str = "internal_error"
    type: str = "server_error"
    rpc_code: str = ErrorCode.INTERNAL
    retry_after_s: float | None = None  # set: the door sends Retry-After (HTTP) and the client may retry

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    def retry_after_header(self) -> str | None:
        """Whole seconds for an HTTP Retry-After header (at least 1), or None."""
        if self.retry_after_s is None:
            return None
        return str(max(1, math.ceil(self.retry_after_s)))


class InvalidRequestError(ControlPlaneError, ValueError):
    """The client's request is wrong: a 400 naming the field in `param`."""

    status, code, type, rpc_code = 400, "invalid_request", "invalid_request_error", ErrorCode.INVALID_PARAMS


class ContextOverflowError(InvalidRequestError):
    """prompt + max_tokens does not fit the slot's context: a client's 400, with the numbers."""

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, n_ctx: int, *, param: str | None = None):
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_ctx = n_ctx
        super().__init__(
            f"this model's context per sequence is {n_ctx} tokens, but the request needs "
            f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt + {max_tokens} to generate); "
            "shorten the prompt or lower max_tokens",
            param=param,
        )


class InvalidSamplingError(InvalidRequestError):
    """A sampling setting this model cannot take (a logit_bias token outside its vocabulary, a
    top_k beyond it): a client's 400 that names the request field."""

    def __init__(self, message: str, param: str):
        super().__init__(message, param=param)


class ChatTemplateMissingError(InvalidRequestError):
    """A chat request to a model with no chat template and no configured chat_format: a client's 400."""

    code = "chat_template_missing"

    def __init__(self, message: str = "this model has no chat template: use /v1/completions", *, param: str | None = "model"):
        super().__init__(message, param=param)


class PermissionDeniedError(ControlPlaneError):
    status, code, type, rpc_code = 403, "permission_denied", "permission_error", ErrorCode.PERMISSION_DENIED


class NotFoundError(ControlPlaneError):
    """A job, collection or stored object that does not exist."""

    status, code, type, rpc_code = 404, "not_found", "invalid_request_error", ErrorCode.NOT_FOUND


class ModelNotFoundError(NotFoundError):
    code, rpc_code = "model_not_found", ErrorCode.MODEL_NOT_FOUND


class InvalidStateError(ControlPlaneError):
    """The object exists but cannot do that now (cancel a finished job): a 409."""

    status, code, type, rpc_code = 409, "invalid_state", "invalid_request_error", ErrorCode.INVALID_STATE


class QueueFullError(ControlPlaneError):
    status, code, type, rpc_code = 429, "queue_full", "rate_limit_error", ErrorCode.QUEUE_FULL

    def __init__(self, message: str, *, retry_after_s: float, param: str | None = None):
        super().__init__(message, param=param, retry_after_s=retry_after_s)


class DeadlineExceededError(ControlPlaneError):
    status, code, type, rpc_code = 504, "deadline_exceeded", "timeout_error", ErrorCode.DEADLINE_EXCEEDED


class EngineUnavailableError(ControlPlaneError):
    """The model cannot serve now (loading failed, its engine died and restarts): a 503 with Retry-After."""

    status, code, type, rpc_code = 503, "engine_unavailable", "server_error", ErrorCode.UNAVAILABLE
    retry_after_s = 1.0


class EngineError(EngineUnavailableError):
    """Raised by an engine that cannot serve (dead thread or child, not loaded, load failure)."""


class ShuttingDownError(ControlPlaneError):
    status, code, type, rpc_code = 503, "shutting_down", "server_error", ErrorCode.SHUTTING_DOWN
    retry_after_s = 5.0


class UpstreamError(ControlPlaneError):
    """A remote OpenAI-compatible server refused the request with a 4xx: the client gets that
    status with the server's message (a 5xx or no answer is an EngineError instead)."""

    rpc_code = ErrorCode.INVALID_PARAMS

    def __init__(self, status: int, message: str, *, code: str | None = None, type: str | None = None, param: str | None = None):  # noqa: A002
        super().__init__(message, param=param)
        self.status = status
        self.code = code or {401: "upstream_unauthorized", 403: "permission_denied", 404: "not_found", 429: "rate_limit_exceeded"}.get(status, "invalid_request")
        self.type = type or ("rate_limit_error" if status == 429 else "invalid_request_error")
        self.rpc_code = {404: ErrorCode.NOT_FOUND, 403: ErrorCode.PERMISSION_DENIED, 401: ErrorCode.PERMISSION_DENIED, 429: ErrorCode.QUEUE_FULL}.get(status, ErrorCode.INVALID_PARAMS)
        if status == 429:
            self.retry_after_s = 1.0


def typed_error(exc: BaseException) -> ControlPlaneError | None:
    """The typed error a door answers for `exc`, or None for a bug (a 500 / `internal`)."""
    return exc if isinstance(exc, ControlPlaneError) else None

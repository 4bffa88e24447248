"""OpenAI-shaped errors: one exception type for the door, and the translations into it.

Every error the door answers is `{"error": {"message", "type", "param", "code"}}` with the
matching status. `ApiError` is raised anywhere in a route (or made from a control-plane or
validation error) and turned into a reply by the app's error handlers.
"""

from __future__ import annotations

import re

import msgspec

from sage_daemon.control.api import ControlPlaneError, QueueFullError
from sage_daemon.engines.base import ChatTemplateMissingError, ContextOverflowError
from sage_daemon.http.schemas import ErrorDetail, ErrorResponse

# OpenAI's `type` values per status (the SDKs switch on the status, people read the type).
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error reply of the door. `headers` go out with it (Retry-After, WWW-Authenticate, Allow)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None, type: str | None = None, headers: dict[str, str] | None = None):  # noqa: A002
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> ErrorResponse:
        return ErrorResponse(ErrorDetail(self.message, self.type, self.param, self.code))

    def encode(self) -> bytes:
        return msgspec.json.encode(self.body())


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def unsupported(what: str, param: str) -> ApiError:
    return ApiError(400, f"{what} is not supported by this server", code="unsupported_parameter", param=param)


_AT = re.compile(r" - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`$")


def from_validation(exc: msgspec.ValidationError) -> ApiError:
    """msgspec's "Expected `float` <= 2.0 - at `$.temperature`" as a 400 with param "temperature"."""
    text = str(exc)
    match = _AT.search(text)
    param = None
    if match:
        text = text[: match.start()]
        # msgspec writes a dict's value as `[...]` (metadata, logit_bias): the field is what a client can act on.
        param = match.group("path").replace("[...]", "").lstrip(".") or None
        if param:
            text = f"{text} for a key of {param}" if match.group("key") else f"{text} at {param}"
    if text.startswith("Expected `object`") and param is None:
        text = "the request body must be a JSON object: " + text
    return ApiError(400, f"invalid request: {text}", code="invalid_request", param=param)


def from_decode(exc: msgspec.DecodeError) -> ApiError:
    return ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json")


def from_exception(exc: BaseException, *, param_hint: str | None = None) -> ApiError | None:
    """The door's answer to a typed error of the layers below, or None for a bug (a 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, QueueFullError):
        retry = max(1, int(round(exc.retry_after_s + 0.499)))
        return ApiError(429, exc.message, code=exc.code, param=exc.param, type=exc.type, headers={"Retry-After": str(retry)})
    if isinstance(exc, ControlPlaneError):
        return ApiError(exc.status, exc.message, code=exc.code, param=exc.param, type=exc.type)
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), code="context_length_exceeded", param=param_hint)
    if isinstance(exc, ChatTemplateMissingError):
        return ApiError(400, str(exc) or "this model has no chat template: use /v1/completions", code="chat_template_missing", param="model")
    return None

"""OpenAI-shaped errors: one exception type for the door, and the translations into it.

Every error the door answers is `{"error": {"message", "type", "param", "code"}}` with the
matching status. `ApiError` is raised anywhere in a route (or made from a typed error of the
layers below, or from a validation error) and turned into a reply by the app's error handlers.

The typed errors (`sage_daemon.core.errors`) carry their own status, code, type, param and
Retry-After; `from_exception` only reads them, so the HTTP door and the RPC door cannot disagree.
"""

from __future__ import annotations

import re

import msgspec

from sage_daemon.core.errors import typed_error
from sage_daemon.http.schemas import ErrorDetail, ErrorResponse

# OpenAI's `type` values per status, for the door's own errors (the SDKs switch on the status,
# people read the type). Typed errors bring their own.
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


def shutting_down() -> ApiError:
    """The answer to a request that arrives during the drain (on a connection still open)."""
    return ApiError(503, "the daemon is shutting down; retry once it is back", code="shutting_down", headers={"Retry-After": "5"})


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
    """The door's answer to `exc`: an ApiError as it is, a typed error as its attributes say, or
    None for anything else (a bug: the caller answers 500 and logs it).

    `param_hint` names the part of the body a 400 is about when the error names no field (an
    engine's context overflow knows the prompt is too long, not whether it came as `messages`
    or `prompt`)."""
    if isinstance(exc, ApiError):
        return exc
    typed = typed_error(exc)
    if typed is None:
        return None
    retry_after = typed.retry_after_header()
    param = typed.param if typed.param is not None or typed.status != 400 else param_hint
    return ApiError(
        typed.status, typed.message, code=typed.code, param=param, type=typed.type,
        headers={"Retry-After": retry_after} if retry_after is not None else None,
    )

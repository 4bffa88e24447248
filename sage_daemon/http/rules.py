"""The door's per-request rules, shared by the Quart app (http/app.py) and the lean ASGI path of
the hot routes (http/lean.py): one copy of each, called by both.

- `request_id`: the X-Request-Id a client sent when it is well formed, else a new one;
- `authorization`: the credentials a request carries, as KeyRing.check takes them;
- `decode_body`: JSON body bytes → a request Struct, or the 400 that says what is wrong;
- `embeddings_reply`: a decoded /v1/embeddings request → the reply's bytes.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

import msgspec
import numpy as np

from sage_daemon.http import doors
from sage_daemon.http import schemas as s
from sage_daemon.http.errors import ApiError, bad_request, from_decode, from_exception, from_validation
from sage_daemon.http.translate import Headers, embedding_inputs, request_meta, whole_floats_as_ints
from sage_daemon.services import Services

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_encoder = msgspec.json.Encoder()


def request_id(given: str | None) -> str:
    return given if given and REQUEST_ID.match(given) else f"req-{uuid.uuid4().hex}"


def authorization(headers: Any) -> str | None:
    """`Authorization`, or Anthropic's `x-api-key` as a bearer token (KeyRing.check's argument)."""
    key = doors.api_key_of(headers)
    return headers.get("Authorization") or (f"Bearer {key}" if key else None)


def decode_body(data: bytes | str, kind: type) -> Any:
    """The request body as `kind`, or the 400 that says what is wrong with it."""
    if not data:
        raise ApiError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        try:
            return msgspec.json.decode(data, type=kind)
        except msgspec.ValidationError as exc:
            # 6.0 where an integer goes: JSON Schema (and so /openapi.json) calls it an integer.
            fixed, changed = whole_floats_as_ints(msgspec.json.decode(data))
            if not changed:
                raise from_validation(exc) from None
            return msgspec.convert(fixed, type=kind)
    except msgspec.ValidationError as exc:
        raise from_validation(exc) from None
    except msgspec.DecodeError as exc:
        raise from_decode(exc) from None
    except RecursionError:  # arrays in arrays thousands deep (in a field typed Any, like tools)
        raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None


async def embeddings_reply(services: Services, req: s.EmbeddingRequest, headers: Headers, request_id: str) -> bytes:
    """Run a decoded embeddings request through the plane; the reply's JSON bytes. base64
    vectors come from one float32 array of all of them (no Python float per value)."""
    inputs = embedding_inputs(req.input)
    meta = request_meta(headers, request_id, req.metadata)
    plane = services.control
    try:
        kind = plane.get_model(req.model).kind
        if kind != "embedding":
            raise bad_request(f"model {req.model!r} is not an embedding model (it is a {kind} model)", param="model")
        with services.lifecycle.track():
            # the plane answers 400 unless the model can truncate (Matryoshka) to `dimensions`
            result = await plane.embed(req.model, inputs, meta, dimensions=req.dimensions)
    except Exception as exc:
        api = from_exception(exc, param_hint="input")
        if api is None:
            raise
        raise api from None
    values: list[Any]
    if req.encoding_format == "base64":
        values = _base64_vectors(result.vectors)
    else:
        values = list(result.vectors)
    data = [s.Embedding(index, value) for index, value in enumerate(values)]
    return _encoder.encode(s.EmbeddingList(data, req.model, s.EmbeddingUsage(result.prompt_tokens, result.prompt_tokens)))


def _base64_vectors(vectors: list[list[float]]) -> list[str]:
    """Each vector as base64 of its little-endian float32 bytes, converted in one array."""
    if not vectors:
        return []
    try:
        matrix = np.asarray(vectors, dtype="<f4")
    except ValueError:  # vectors of different lengths: one array each
        return [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii") for v in vectors]
    raw = matrix.tobytes()
    step = len(raw) // len(vectors)
    return [base64.b64encode(raw[i : i + step]).decode("ascii") for i in range(0, len(raw), step)] if step else [""] * len(vectors)

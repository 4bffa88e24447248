"""GET /openapi.json: an OpenAPI 3.1 document generated from the Structs that validate requests.

The document says what the server does: a route needs the bearer key only when keys are
configured (and the operational routes only when `http.public_health` is false too), so the
app builds one document per (keys configured, public health) pair it meets."""

from __future__ import annotations

from typing import Any

import msgspec

from sage_daemon.http import schemas as s

_REF = "#/components/schemas/{name}"


def _json(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


_PRIORITY_HEADERS = [
    {
        "name": "X-SAGE-Priority", "in": "header", "required": False,
        "description": "Scheduling class (also metadata.priority in the body).",
        "schema": {"type": "string", "enum": ["critical", "high", "normal", "low", "background"]},
    },
    {
        "name": "X-SAGE-Deadline-Ms", "in": "header", "required": False,
        "description": "Deadline in milliseconds from arrival; past it the request fails with 504.",
        "schema": {"type": "integer", "minimum": 1, "maximum": 86400000},
    },
]
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}}


def openapi_document(version: str, *, keys: bool = True, public_health: bool = True) -> dict[str, Any]:
    """`keys`: API keys are configured (the /v1 routes need one); `public_health`: /health,
    /metrics and /version need none even then."""
    types = [
        s.ChatCompletionRequest, s.ChatCompletion, s.ChatCompletionChunk,
        s.CompletionRequest, s.Completion,
        s.EmbeddingRequest, s.EmbeddingList, s.RerankRequest, s.RerankReply,
        s.ModelList, s.Model, s.Health, s.ErrorResponse,
    ]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    ref = {t.__name__: schema for t, schema in zip(types, schemas, strict=True)}
    guarded: dict[str, Any] = {"security": [{"bearer": []}]} if keys else {}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SAGE daemon: OpenAI-compatible API",
            "version": version,
            "description": "Chat, completions, embeddings and models as the OpenAI API serves them, plus health and metrics.",
        },
        "paths": _v1_paths(ref, guarded) | _operational_paths(ref, guarded if not public_health else {}),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key (http.api_keys or http.api_key_file)."}},
        },
    }


def _error(ref: dict[str, Any]) -> dict[str, Any]:
    return {"description": "An OpenAI-shaped error.", "content": _json(ref["ErrorResponse"])}


def _v1_paths(ref: dict[str, Any], guarded: dict[str, Any]) -> dict[str, Any]:
    error = _error(ref)
    retry_error = {**error, "description": "An OpenAI-shaped error; retry after Retry-After seconds.", "headers": _RETRY_AFTER}
    errors = {code: error for code in ("400", "401", "404", "413", "415")} | {"429": retry_error, "503": retry_error}

    def post(request: str, reply: dict[str, Any], summary: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                **guarded,
                "parameters": _PRIORITY_HEADERS,
                "requestBody": {"required": True, "content": _json(ref[request])},
                "responses": {"200": reply, **errors},
            }
        }

    def generated(reply: str) -> dict[str, Any]:
        return {
            "description": "The reply, or a stream of server-sent events when `stream` is true.",
            "content": {**_json(ref[reply]), "text/event-stream": {"schema": {"type": "string"}}},
        }

    return {
        "/v1/chat/completions": post("ChatCompletionRequest", generated("ChatCompletion"), "Create a chat completion"),
        "/v1/completions": post("CompletionRequest", generated("Completion"), "Create a completion"),
        "/v1/embeddings": post("EmbeddingRequest", {"description": "The embeddings.", "content": _json(ref["EmbeddingList"])}, "Create embeddings"),
        "/v1/rerank": post("RerankRequest", {"description": "The documents by relevance.", "content": _json(ref["RerankReply"])}, "Rerank documents against a query"),
        "/v1/models": {
            "get": {
                "summary": "List the configured models, loaded or not",
                **guarded,
                "responses": {"200": {"description": "Every configured model.", "content": _json(ref["ModelList"])}, "401": error},
            }
        },
        "/v1/models/{model}": {
            "get": {
                "summary": "Describe one model",
                **guarded,
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The model.", "content": _json(ref["Model"])}, "401": error, "404": error},
            }
        },
    }


def _operational_paths(ref: dict[str, Any], guarded: dict[str, Any]) -> dict[str, Any]:
    error = _error(ref)
    version = {"type": "object", "properties": {"version": {"type": "string"}}, "required": ["version"]}
    return {
        "/health": {
            "get": {
                "summary": "Whether the daemon can serve",
                **guarded,
                "responses": {
                    "200": {"description": "Every required engine can serve.", "content": _json(ref["Health"])},
                    "401": error,
                    "503": {"description": "Not able to serve; `reasons` says why.", "content": _json(ref["Health"])},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                **guarded,
                "responses": {"200": {"description": "Prometheus text exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}}, "401": error},
            }
        },
        "/version": {
            "get": {
                "summary": "The daemon's version",
                **guarded,
                "responses": {"200": {"description": "The version.", "content": _json(version)}, "401": error},
            }
        },
    }

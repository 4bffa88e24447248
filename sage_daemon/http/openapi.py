"""GET /openapi.json: an OpenAPI 3.1 document generated from the Structs that validate requests."""

from __future__ import annotations

from typing import Any

import msgspec

from sage_daemon.http import schemas as s

_REF = "#/components/schemas/{name}"


def _json(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def openapi_document(version: str) -> dict[str, Any]:
    types = [
        s.ChatCompletionRequest, s.ChatCompletion, s.ChatCompletionChunk,
        s.CompletionRequest, s.Completion,
        s.EmbeddingRequest, s.EmbeddingList,
        s.ModelList, s.Model, s.Health, s.ErrorResponse,
    ]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    ref = {t.__name__: schema for t, schema in zip(types, schemas, strict=True)}
    error = {"description": "An OpenAI-shaped error.", "content": _json(ref["ErrorResponse"])}
    security = [{"bearer": []}]
    priority_headers = [
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
    errors = {code: error for code in ("400", "401", "404", "413", "415", "429", "503")}

    def generation(request: str, reply: str, summary: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "security": security,
                "parameters": priority_headers,
                "requestBody": {"required": True, "content": _json(ref[request])},
                "responses": {
                    "200": {
                        "description": "The reply, or a stream of server-sent events when `stream` is true.",
                        "content": {**_json(ref[reply]), "text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **errors,
                },
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SAGE daemon: OpenAI-compatible API",
            "version": version,
            "description": "Chat, completions, embeddings and models as the OpenAI API serves them, plus health and metrics.",
        },
        "paths": {
            "/v1/chat/completions": generation("ChatCompletionRequest", "ChatCompletion", "Create a chat completion"),
            "/v1/completions": generation("CompletionRequest", "Completion", "Create a completion"),
            "/v1/embeddings": {
                "post": {
                    "summary": "Create embeddings",
                    "security": security,
                    "parameters": priority_headers,
                    "requestBody": {"required": True, "content": _json(ref["EmbeddingRequest"])},
                    "responses": {"200": {"description": "The embeddings.", "content": _json(ref["EmbeddingList"])}, **errors},
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "List the configured models, loaded or not",
                    "security": security,
                    "responses": {"200": {"description": "Every configured model.", "content": _json(ref["ModelList"])}, "401": error},
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "summary": "Describe one model",
                    "security": security,
                    "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "The model.", "content": _json(ref["Model"])}, "401": error, "404": error},
                }
            },
            "/health": {
                "get": {
                    "summary": "Whether the daemon can serve",
                    "responses": {
                        "200": {"description": "Every required engine can serve.", "content": _json(ref["Health"])},
                        "503": {"description": "Not able to serve; `reasons` says why.", "content": _json(ref["Health"])},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Required only when API keys are configured."}},
        },
    }
